//! An in-process fake of AWS STS for integration tests.
//!
//! [`FakeSts::start`] serves HTTP/1 on `127.0.0.1:<ephemeral>` from a tokio task until the
//! [`FakeSts`] is dropped or [`FakeSts::shutdown`] is awaited. Point an SDK client at
//! [`FakeSts::endpoint_url`].
//!
//! **Wire.** The STS Query API as aws-sdk-sts speaks it: `POST /` with a form-encoded
//! body (`Action=AssumeRole&Version=2011-06-15&RoleArn=…&RoleSessionName=…&ExternalId=…&
//! DurationSeconds=…&Policy=…&PolicyArns.member.N.arn=…&Tags.member.N.Key=…&
//! Tags.member.N.Value=…&SourceIdentity=…`, or `Action=GetCallerIdentity`). Answers are
//! the real XML documents (`<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/
//! 2011-06-15/">…`) and real error documents (`<ErrorResponse><Error><Type>Sender</Type>
//! <Code>…</Code><Message>…</Message></Error><RequestId>…</RequestId></ErrorResponse>`)
//! with the status codes STS uses. Signatures are not verified; the AccessKeyId is read
//! from the SigV4 `Authorization` header (`Credential=AKID/date/region/sts/aws4_request`)
//! and recorded, so tests can tell which identity signed each call.
//!
//! **Roles and trust.** Roles must be registered ([`FakeSts::add_role`]); an unknown role
//! is `AccessDenied`, exactly like a role that exists but does not trust the caller. An
//! `ExternalId` outside STS's rules is the real `ValidationError`, which echoes it. Each
//! role has a [`TrustRule`] for the External ID, an optional `MaxSessionDuration`
//! (exceeding it is the real `ValidationError`), an optional credential lifetime shorter
//! than requested, and an optional persistent fault.
//!
//! **Lifetimes.** `Expiration` = injected clock's now + min(DurationSeconds (default
//! 3600), role lifetime override, global lifetime override), formatted
//! `YYYY-MM-DDTHH:MM:SSZ`. Use a [`credvend::clock::ManualClock`] to control it.
//!
//! **Faults.** AssumeRole calls take, in order of precedence: the next one-shot fault
//! from a FIFO queue ([`FakeSts::push_fault`]), the role's own fault, the persistent fault
//! ([`FakeSts::set_persistent_fault`]). GetCallerIdentity is never faulted. Every call is
//! logged with the fault that fired, so a test can prove its fault was exercised
//! ([`FakeSts::faults_fired`], [`FakeSts::assert_no_pending_faults`]).
//!
//! **Holding calls.** [`FakeSts::hold_assume_role`] makes AssumeRole calls wait inside
//! the fake until the test releases them ([`Hold::release`]), whatever fault they took:
//! a test can observe credvend while a fetch is in flight for as long as it needs,
//! instead of racing a [`Fault::Latency`] window. Held calls are marked
//! ([`StsCall::held`]) and counted ([`Hold::wait_held`]).
//!
//! **Identity.** Credentials the fake issues are remembered: GetCallerIdentity signed
//! with one answers the assumed-role ARN it was issued for (so a test can prove a client
//! acts as the mapping's role), anything else answers the base identity (default
//! [`DEFAULT_BASE_IDENTITY_ARN`]). AssumeRole signed with fake-issued credentials is role
//! chaining, and STS's 1-hour chaining limit applies.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use credvend::clock::Clock;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Identity answered by GetCallerIdentity for credentials the fake did not issue.
pub const DEFAULT_BASE_IDENTITY_ARN: &str = "arn:aws:iam::568237466542:user/vendor";

/// What a customer role's trust policy says about `sts:ExternalId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustRule {
    /// `Condition.StringEquals.sts:ExternalId`: a missing or different External ID is
    /// `AccessDenied` (the safe, recommended policy).
    RequireExternalId(String),
    /// No condition at all: anything is accepted and a given External ID is ignored, as
    /// AWS does. The confused-deputy hole the enforcement check looks for.
    NoExternalIdRequired,
    /// `Condition.Null.sts:ExternalId = false`: some External ID must be present, any
    /// value passes. Also unsafe: a wrong External ID is accepted.
    AnyExternalId,
}

/// A scripted misbehaviour of STS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 400 `Throttling` "Rate exceeded".
    Throttling,
    /// 403 `AccessDenied`, as for a revoked trust policy.
    AccessDenied,
    /// 400 `ExpiredToken`: the caller's (base) session token has expired.
    ExpiredToken,
    /// 403 `InvalidClientTokenId`: the caller's access key is unknown.
    InvalidClientTokenId,
    /// 500 `InternalFailure`.
    InternalError,
    /// 503 `ServiceUnavailable`.
    ServiceUnavailable,
    /// Waits this long (tokio time), then answers normally.
    Latency(Duration),
    /// Never answers; the connection is held until the client gives up or the fake stops.
    Hang,
    /// 200 with a body that is not XML.
    MalformedXml,
    /// 403 `RegionDisabledException`.
    RegionDisabled,
}

/// A customer (or vendor) role known to the fake. A small builder.
#[derive(Debug, Clone)]
pub struct Role {
    arn: String,
    trust: TrustRule,
    max_session_duration: Option<Duration>,
    lifetime: Option<Duration>,
    fault: Option<Fault>,
}

impl Role {
    pub fn new(arn: impl Into<String>, trust: TrustRule) -> Self {
        Self {
            arn: arn.into(),
            trust,
            max_session_duration: None,
            lifetime: None,
            fault: None,
        }
    }

    /// The role's `MaxSessionDuration`: a longer DurationSeconds is a `ValidationError`.
    /// Unset means only STS's own 43200 s limit applies.
    pub fn max_session_duration(mut self, max: Duration) -> Self {
        self.max_session_duration = Some(max);
        self
    }

    /// Issue credentials living at most this long, whatever DurationSeconds asked for.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// A fault applied to every AssumeRole of this role (after one-shot faults).
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }
}

/// One request the fake received, as parsed from the wire.
#[derive(Debug, Clone, Default)]
pub struct StsCall {
    /// `AssumeRole`, `GetCallerIdentity`, or whatever else was sent.
    pub action: String,
    pub role_arn: Option<String>,
    /// `None` when no ExternalId parameter was present at all.
    pub external_id: Option<String>,
    pub session_name: Option<String>,
    pub duration_seconds: Option<u64>,
    pub policy: Option<String>,
    /// `PolicyArns.member.N.arn`, in member order.
    pub policy_arns: Vec<String>,
    /// `Tags.member.N.Key` / `.Value`, in member order.
    pub tags: Vec<(String, String)>,
    pub source_identity: Option<String>,
    /// From `Authorization: AWS4-HMAC-SHA256 Credential=AKID/…`.
    pub access_key_id: Option<String>,
    /// The region of the SigV4 credential scope.
    pub signing_region: Option<String>,
    /// The fault that shaped this answer, if any.
    pub fault: Option<Fault>,
    /// HTTP status answered; `None` for [`Fault::Hang`].
    pub status: Option<u16>,
    /// AWS error code answered, if any.
    pub error_code: Option<String>,
    /// AccessKeyId of the credentials issued by a successful AssumeRole.
    pub issued_access_key_id: Option<String>,
    /// Monotonic time the request arrived (before any latency fault), for measuring the
    /// rate at which credvend calls STS.
    pub received_at: Option<std::time::Instant>,
    /// The call waited on a [`Hold`] before it was answered.
    pub held: bool,
}

/// A gate on AssumeRole answers, from [`FakeSts::hold_assume_role`]. Calls arriving while
/// it is closed wait (after taking their fault, before any latency) until
/// [`Hold::release`], or until the fake stops. Cheap to clone; clones share the gate.
#[derive(Clone)]
pub struct Hold {
    released: Arc<watch::Sender<bool>>,
    /// Calls that have reached the gate while it was closed, so far.
    arrived: Arc<watch::Sender<usize>>,
}

impl Hold {
    fn new() -> Self {
        Self {
            released: Arc::new(watch::channel(false).0),
            arrived: Arc::new(watch::channel(0).0),
        }
    }

    /// Opens the gate: every held call is answered, and later calls pass straight through.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    pub fn is_released(&self) -> bool {
        *self.released.borrow()
    }

    /// Calls that have waited (or are waiting) at the gate so far.
    pub fn held(&self) -> usize {
        *self.arrived.borrow()
    }

    /// Waits until at least `n` calls have reached the gate; panics after 30 s.
    pub async fn wait_held(&self, n: usize) {
        let mut arrived = self.arrived.subscribe();
        let reached = tokio::time::timeout(
            Duration::from_secs(30),
            arrived.wait_for(|count| *count >= n),
        )
        .await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "fake STS: {} AssumeRole call(s) reached the hold within 30 s, expected {n}",
            self.held()
        );
    }

    /// Holds one call until released or until `shutdown`.
    async fn wait(&self, shutdown: &mut watch::Receiver<bool>) {
        let mut released = self.released.subscribe();
        self.arrived.send_modify(|count| *count += 1);
        tokio::select! {
            _ = released.wait_for(|open| *open) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
}

/// Handle to a running fake STS. Dropping it stops the server and releases hung calls.
pub struct FakeSts {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

struct State {
    clock: Arc<dyn Clock>,
    roles: HashMap<String, Role>,
    one_shot_faults: VecDeque<Fault>,
    persistent_fault: Option<Fault>,
    lifetime_override: Option<Duration>,
    base_identity_arn: String,
    /// Credentials issued so far: AccessKeyId → assumed-role ARN.
    issued: HashMap<String, String>,
    calls: Vec<StsCall>,
    /// Numbers request IDs and issued credentials.
    serial: u64,
    /// The gate AssumeRole calls wait at, if a test installed one.
    hold: Option<Hold>,
}

impl FakeSts {
    /// Starts the fake on an ephemeral loopback port. `clock` decides `Expiration`.
    pub async fn start(clock: Arc<dyn Clock>) -> FakeSts {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake STS on 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake STS local address");
        let state = Arc::new(Mutex::new(State {
            clock,
            roles: HashMap::new(),
            one_shot_faults: VecDeque::new(),
            persistent_fault: None,
            lifetime_override: None,
            base_identity_arn: DEFAULT_BASE_IDENTITY_ARN.to_owned(),
            issued: HashMap::new(),
            calls: Vec::new(),
            serial: 0,
            hold: None,
        }));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, state.clone(), shutdown_rx));
        FakeSts {
            addr,
            state,
            shutdown,
            server: Some(server),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `endpoint_url`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers (or replaces) a role.
    pub fn add_role(&self, role: Role) -> &Self {
        self.state().roles.insert(role.arn.clone(), role);
        self
    }

    /// Sets or clears the persistent fault of a registered role.
    pub fn set_role_fault(&self, role_arn: &str, fault: Option<Fault>) -> &Self {
        self.state()
            .roles
            .get_mut(role_arn)
            .unwrap_or_else(|| panic!("fake STS: role {role_arn} is not registered"))
            .fault = fault;
        self
    }

    /// Queues a fault for the next AssumeRole call that has not taken one yet.
    pub fn push_fault(&self, fault: Fault) -> &Self {
        self.state().one_shot_faults.push_back(fault);
        self
    }

    /// Sets or clears a fault applied to every AssumeRole (after one-shot and role faults).
    pub fn set_persistent_fault(&self, fault: Option<Fault>) -> &Self {
        self.state().persistent_fault = fault;
        self
    }

    /// Caps the lifetime of every issued credential (simulates STS handing back less
    /// than DurationSeconds asked for).
    pub fn set_lifetime_override(&self, lifetime: Option<Duration>) -> &Self {
        self.state().lifetime_override = lifetime;
        self
    }

    /// The identity answered by GetCallerIdentity for credentials the fake did not issue.
    pub fn set_base_identity(&self, arn: impl Into<String>) -> &Self {
        self.state().base_identity_arn = arn.into();
        self
    }

    /// Holds every AssumeRole call from now on until the returned [`Hold`] is released
    /// (replacing any earlier hold, which stays as it is for the calls it holds).
    pub fn hold_assume_role(&self) -> Hold {
        let hold = Hold::new();
        self.state().hold = Some(hold.clone());
        hold
    }

    /// Every call received so far, in arrival order.
    pub fn calls(&self) -> Vec<StsCall> {
        self.state().calls.clone()
    }

    /// The AssumeRole calls received so far.
    pub fn assume_role_calls(&self) -> Vec<StsCall> {
        self.state()
            .calls
            .iter()
            .filter(|c| c.action == "AssumeRole")
            .cloned()
            .collect()
    }

    /// Panics (at the caller, with `why`) unless exactly `expected` AssumeRole calls
    /// have arrived so far.
    #[track_caller]
    pub fn assert_assume_role_calls(&self, expected: usize, why: &str) {
        assert_eq!(self.assume_role_calls().len(), expected, "{why}");
    }

    /// The faults that shaped answers so far, in order.
    pub fn faults_fired(&self) -> Vec<Fault> {
        self.state()
            .calls
            .iter()
            .filter_map(|c| c.fault.clone())
            .collect()
    }

    /// The faults that shaped answers to AssumeRole calls for `role_arn`, in order.
    pub fn faults_fired_for(&self, role_arn: &str) -> Vec<Fault> {
        self.state()
            .calls
            .iter()
            .filter(|c| c.role_arn.as_deref() == Some(role_arn))
            .filter_map(|c| c.fault.clone())
            .collect()
    }

    /// One-shot faults queued but not yet consumed.
    pub fn pending_faults(&self) -> usize {
        self.state().one_shot_faults.len()
    }

    /// Panics unless every queued one-shot fault has fired.
    #[track_caller]
    pub fn assert_no_pending_faults(&self) {
        let pending = self.state().one_shot_faults.clone();
        assert!(
            pending.is_empty(),
            "fake STS: faults never fired: {pending:?}"
        );
    }

    /// Stops the server, waits for it, and re-raises any panic from a request handler.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(server) = self.server.take()
            && let Err(err) = server.await
            && err.is_panic()
        {
            std::panic::resume_unwind(err.into_panic());
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for FakeSts {
    fn drop(&mut self) {
        // Wakes the accept loop and every hung handler; the loop then drops (aborts)
        // its connection tasks.
        let _ = self.shutdown.send(true);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking handler is re-raised by `shutdown()`; later calls still see the log.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let state = state.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        let shutdown = shutdown.clone();
                        async move { Ok::<_, Infallible>(handle(req, state, shutdown).await) }
                    });
                    // Client disconnects are normal (a timed-out SDK call hangs up).
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = joined
                    && err.is_panic()
                {
                    std::panic::resume_unwind(err.into_panic());
                }
            }
        }
    }
}

/// What to send back, decided under the lock and carried out after it is released.
enum Answer {
    Xml(StatusCode, String),
    Hang,
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    mut shutdown: watch::Receiver<bool>,
) -> Response<Full<Bytes>> {
    let received_at = std::time::Instant::now();
    let (access_key_id, signing_region) = parse_authorization(&req);
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return xml_response(StatusCode::BAD_REQUEST, String::new()),
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let mut call = parse_call(&params);
    call.access_key_id = access_key_id;
    call.signing_region = signing_region;
    call.received_at = Some(received_at);

    let (fault, hold) = if call.action == "AssumeRole" {
        let mut state = lock(&state);
        let fault = state.take_fault(call.role_arn.as_deref());
        (fault, state.hold.clone().filter(|hold| !hold.is_released()))
    } else {
        (None, None)
    };
    if let Some(hold) = hold {
        call.held = true;
        hold.wait(&mut shutdown).await;
    }
    if let Some(Fault::Latency(delay)) = fault {
        tokio::time::sleep(delay).await;
    }
    let answer = lock(&state).answer(call, fault);
    match answer {
        Answer::Xml(status, body) => xml_response(status, body),
        Answer::Hang => {
            // Held until the fake stops; the client's own timeout is what ends the call.
            let _ = shutdown.wait_for(|stop| *stop).await;
            xml_response(StatusCode::SERVICE_UNAVAILABLE, String::new())
        }
    }
}

impl State {
    fn take_fault(&mut self, role_arn: Option<&str>) -> Option<Fault> {
        self.one_shot_faults
            .pop_front()
            .or_else(|| {
                role_arn
                    .and_then(|arn| self.roles.get(arn))
                    .and_then(|role| role.fault.clone())
            })
            .or_else(|| self.persistent_fault.clone())
    }

    /// Decides the answer and logs the call with its outcome.
    fn answer(&mut self, mut call: StsCall, fault: Option<Fault>) -> Answer {
        self.serial += 1;
        let request_id = format!("fa4e0000-0000-4000-8000-{:012}", self.serial);
        let outcome = match &fault {
            Some(Fault::Hang) => Outcome::Hang,
            Some(Fault::Latency(_)) | None => self.normal_outcome(&mut call),
            Some(fault) => fault_outcome(fault, &call, self.caller_arn(&call)),
        };
        call.fault = fault;
        let answer = match outcome {
            Outcome::Hang => Answer::Hang,
            Outcome::Ok(body) => {
                call.status = Some(200);
                Answer::Xml(StatusCode::OK, body.replace("{request_id}", &request_id))
            }
            Outcome::Raw(status, body) => {
                call.status = Some(status.as_u16());
                Answer::Xml(status, body)
            }
            Outcome::Error(status, code, message) => {
                call.status = Some(status.as_u16());
                call.error_code = Some(code.to_owned());
                Answer::Xml(status, error_xml(status, code, &message, &request_id))
            }
        };
        self.calls.push(call);
        answer
    }

    fn normal_outcome(&mut self, call: &mut StsCall) -> Outcome {
        match call.action.as_str() {
            "AssumeRole" => self.assume_role(call),
            "GetCallerIdentity" => self.get_caller_identity(call),
            other => Outcome::Error(
                StatusCode::BAD_REQUEST,
                "InvalidAction",
                format!("Could not find operation {other} for version 2011-06-15"),
            ),
        }
    }

    /// The ARN of whoever signed `call`.
    fn caller_arn(&self, call: &StsCall) -> String {
        call.access_key_id
            .as_ref()
            .and_then(|akid| self.issued.get(akid))
            .cloned()
            .unwrap_or_else(|| self.base_identity_arn.clone())
    }

    fn assume_role(&mut self, call: &mut StsCall) -> Outcome {
        let (Some(role_arn), Some(session_name)) =
            (call.role_arn.clone(), call.session_name.clone())
        else {
            return validation_error("RoleArn and RoleSessionName are required".to_owned());
        };
        if let Some(invalid) = call.external_id.as_deref().and_then(external_id_error) {
            return validation_error(invalid);
        }
        let requested = call.duration_seconds.unwrap_or(3600);
        if requested < 900 {
            return validation_error(format!(
                "1 validation error detected: Value '{requested}' at 'durationSeconds' failed \
                 to satisfy constraint: Member must have value greater than or equal to 900"
            ));
        }
        if requested > 43200 {
            return validation_error(format!(
                "1 validation error detected: Value '{requested}' at 'durationSeconds' failed \
                 to satisfy constraint: Member must have value less than or equal to 43200"
            ));
        }
        let caller = self.caller_arn(call);
        let denied = || {
            Outcome::Error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                format!(
                    "User: {caller} is not authorized to perform: sts:AssumeRole on resource: \
                     {role_arn}"
                ),
            )
        };
        let Some(role) = self.roles.get(&role_arn) else {
            return denied();
        };
        let trusted = match (&role.trust, call.external_id.as_deref()) {
            (TrustRule::RequireExternalId(want), Some(got)) => want == got,
            (TrustRule::RequireExternalId(_), None) => false,
            (TrustRule::NoExternalIdRequired, _) => true,
            (TrustRule::AnyExternalId, given) => given.is_some(),
        };
        if !trusted {
            return denied();
        }
        let chained = call
            .access_key_id
            .as_ref()
            .is_some_and(|akid| self.issued.contains_key(akid));
        if chained && requested > 3600 {
            return validation_error(
                "The requested DurationSeconds exceeds the 1 hour session limit for roles \
                 assumed by role chaining."
                    .to_owned(),
            );
        }
        if role
            .max_session_duration
            .is_some_and(|max| requested > max.as_secs())
        {
            return validation_error(
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
                    .to_owned(),
            );
        }

        let lifetime = [
            Some(Duration::from_secs(requested)),
            role.lifetime,
            self.lifetime_override,
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("requested duration is always present");
        let expiration = humantime::format_rfc3339_seconds(self.clock.now() + lifetime);

        let n = self.serial;
        let access_key_id = format!("ASIAFAKE{n:012}");
        let secret_access_key = format!("fakeSecretAccessKey/{n:020}");
        let session_token = fake_session_token(n);
        let account = account_of(&role_arn);
        let role_name = role_arn.rsplit('/').next().unwrap_or_default();
        let assumed_role_arn =
            format!("arn:aws:sts::{account}:assumed-role/{role_name}/{session_name}");
        let assumed_role_id = format!("AROAFAKE{:012}:{session_name}", role_name.len());

        self.issued
            .insert(access_key_id.clone(), assumed_role_arn.clone());
        call.issued_access_key_id = Some(access_key_id.clone());

        let source_identity = call
            .source_identity
            .as_deref()
            .map(|s| format!("<SourceIdentity>{}</SourceIdentity>", xml_escape(s)))
            .unwrap_or_default();
        Outcome::Ok(format!(
            r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    {source_identity}
    <AssumedRoleUser>
      <AssumedRoleId>{}</AssumedRoleId>
      <Arn>{}</Arn>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{access_key_id}</AccessKeyId>
      <SecretAccessKey>{}</SecretAccessKey>
      <SessionToken>{}</SessionToken>
      <Expiration>{expiration}</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata>
    <RequestId>{{request_id}}</RequestId>
  </ResponseMetadata>
</AssumeRoleResponse>
"#,
            xml_escape(&assumed_role_id),
            xml_escape(&assumed_role_arn),
            xml_escape(&secret_access_key),
            xml_escape(&session_token),
        ))
    }

    fn get_caller_identity(&mut self, call: &StsCall) -> Outcome {
        let arn = self.caller_arn(call);
        let account = account_of(&arn);
        let user_id = match arn.split_once(":assumed-role/") {
            Some((_, rest)) => format!(
                "AROAFAKE000000000000:{}",
                rest.rsplit('/').next().unwrap_or_default()
            ),
            None => "AIDAFAKE000000000000".to_owned(),
        };
        Outcome::Ok(format!(
            r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>{}</Arn>
    <UserId>{}</UserId>
    <Account>{}</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata>
    <RequestId>{{request_id}}</RequestId>
  </ResponseMetadata>
</GetCallerIdentityResponse>
"#,
            xml_escape(&arn),
            xml_escape(&user_id),
            xml_escape(&account),
        ))
    }
}

enum Outcome {
    /// A success document; `{request_id}` is filled in afterwards.
    Ok(String),
    /// An error document.
    Error(StatusCode, &'static str, String),
    /// A body sent verbatim.
    Raw(StatusCode, String),
    Hang,
}

/// The account of an ARN, or all zeros when it names none.
fn account_of(arn: &str) -> String {
    credvend::aws_names::AccountId::of_arn(arn)
        .map_or_else(|| "000000000000".to_owned(), |a| a.as_str().to_owned())
}

/// STS's own check of an `ExternalId` (2–1224 characters of `[\w+=,.@:/-]`), with the
/// message it answers: like every STS validation error it echoes the value.
fn external_id_error(external_id: &str) -> Option<String> {
    let length = external_id.chars().count();
    let constraint = if length < 2 {
        "Member must have length greater than or equal to 2"
    } else if length > 1224 {
        "Member must have length less than or equal to 1224"
    } else if !external_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c))
    {
        "Member must satisfy regular expression pattern: [\\w+=,.@:/-]*"
    } else {
        return None;
    };
    Some(format!(
        "1 validation error detected: Value '{external_id}' at 'externalId' failed to \
         satisfy constraint: {constraint}"
    ))
}

fn validation_error(message: String) -> Outcome {
    Outcome::Error(StatusCode::BAD_REQUEST, "ValidationError", message)
}

fn fault_outcome(fault: &Fault, call: &StsCall, caller: String) -> Outcome {
    let role = call.role_arn.as_deref().unwrap_or_default();
    let account = account_of(&caller);
    match fault {
        Fault::Throttling => Outcome::Error(
            StatusCode::BAD_REQUEST,
            "Throttling",
            "Rate exceeded".to_owned(),
        ),
        Fault::AccessDenied => Outcome::Error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!(
                "User: {caller} is not authorized to perform: sts:AssumeRole on resource: {role}"
            ),
        ),
        Fault::ExpiredToken => Outcome::Error(
            StatusCode::BAD_REQUEST,
            "ExpiredToken",
            "The security token included in the request is expired".to_owned(),
        ),
        Fault::InvalidClientTokenId => Outcome::Error(
            StatusCode::FORBIDDEN,
            "InvalidClientTokenId",
            "The security token included in the request is invalid.".to_owned(),
        ),
        Fault::InternalError => Outcome::Error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "An internal error occurred.".to_owned(),
        ),
        Fault::ServiceUnavailable => Outcome::Error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Service is unavailable. Please try again later.".to_owned(),
        ),
        Fault::RegionDisabled => Outcome::Error(
            StatusCode::FORBIDDEN,
            "RegionDisabledException",
            format!(
                "STS is not activated in this region for account:{account}. Your account \
                 administrator can activate STS in this region using the IAM Console."
            ),
        ),
        Fault::MalformedXml => Outcome::Raw(
            StatusCode::OK,
            "<AssumeRoleResponse><AssumeRoleResult><Credentials>&garbage;</Cred".to_owned(),
        ),
        Fault::Latency(_) | Fault::Hang => unreachable!("handled before fault_outcome"),
    }
}

fn error_xml(status: StatusCode, code: &str, message: &str, request_id: &str) -> String {
    let kind = if status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    \
         <Type>{kind}</Type>\n    <Code>{code}</Code>\n    <Message>{}</Message>\n  </Error>\n  \
         <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n",
        xml_escape(message)
    )
}

fn xml_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn xml_escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// `(AccessKeyId, region)` from `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/sts/aws4_request, …`.
fn parse_authorization(req: &Request<Incoming>) -> (Option<String>, Option<String>) {
    let Some(header) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return (None, None);
    };
    let Some((_, rest)) = header.split_once("Credential=") else {
        return (None, None);
    };
    let scope = rest.split([',', ' ']).next().unwrap_or_default();
    let mut parts = scope.split('/');
    let akid = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let region = parts.nth(1).map(str::to_owned);
    (akid, region)
}

/// The action and AssumeRole parameters of a form body.
fn parse_call(params: &[(String, String)]) -> StsCall {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // `Prefix.member.N.field` entries, ordered by N.
    let members = |prefix: &str, field: &str| -> Vec<(u32, String)> {
        let mut found: Vec<(u32, String)> = params
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(prefix)?.strip_prefix(".member.")?;
                let (index, name) = rest.split_once('.')?;
                if name != field {
                    return None;
                }
                Some((index.parse().ok()?, v.clone()))
            })
            .collect();
        found.sort();
        found
    };
    let tag_values = members("Tags", "Value");
    StsCall {
        action: get("Action").unwrap_or_default(),
        role_arn: get("RoleArn"),
        external_id: get("ExternalId"),
        session_name: get("RoleSessionName"),
        duration_seconds: get("DurationSeconds").and_then(|d| d.parse().ok()),
        policy: get("Policy"),
        policy_arns: members("PolicyArns", "arn")
            .into_iter()
            .map(|(_, arn)| arn)
            .collect(),
        tags: members("Tags", "Key")
            .into_iter()
            .map(|(i, key)| {
                let value = tag_values
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                (key, value)
            })
            .collect(),
        source_identity: get("SourceIdentity"),
        ..StsCall::default()
    }
}

/// Real STS session tokens are base64 of roughly 700–1,200 characters; the fake's have
/// the same shape and a length of 1,024, so memory and body-size figures from the fake
/// are the ones production sees.
fn fake_session_token(serial: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut token = format!("FakeSessionToken//{serial:012}//");
    let mut state = serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while token.len() < 1022 {
        // xorshift64: deterministic, varied filler.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        token.push(char::from(ALPHABET[(state % 64) as usize]));
    }
    token.push_str("==");
    token
}
