//! The onboarding documents as infrastructure code the customer deploys: a
//! CloudFormation template (with its console quick-create link) and a Terraform module
//! (docs/onboarding.md, "CloudFormation and Terraform").
//!
//! One source of truth: the trust and permissions policies inside are built by the same
//! code as `credvend policy trust` / `policy permissions` print
//! ([`super::document`]), with placeholders where the customer may change a value: the
//! bucket, the key prefix and the External ID become CloudFormation parameters or
//! Terraform variables, whose defaults are the values given on the command line. With
//! those defaults, the documents equal what `policy` prints; the tests resolve the
//! parameters and compare the documents structurally.
//!
//! A placeholder is a control character around a parameter name
//! ([`Param::token`]). No validated input can contain one (bucket names, prefixes,
//! External IDs and ARNs are printable ASCII or reject control characters), so every
//! other character of a document is literal and is escaped for its format:
//! `${` becomes `${!` inside CloudFormation's `Fn::Sub` and `$${` in a Terraform string.
//!
//! The shape of the permissions policy depends on whether there is a prefix (one
//! statement or three, see [`super::render_permissions_policy`]), so it is fixed when
//! the template is rendered: a template rendered with `--prefix` has a `KeyPrefix`
//! parameter, one without has none.

use std::fmt::Write as _;

use serde_json::Value;

use super::document::{permissions_value, trust_value};
use super::{
    PolicyError, Principal, SessionAction, TrustService, validate_bucket_name,
    validate_external_id, validate_prefix,
};
use crate::aws_names::RoleArn;

/// The inline policy's name on the role, in both formats.
pub const PERMISSIONS_POLICY_NAME: &str = "credvend-sync";

/// The CloudFormation console's quick-create page, before `?region=`.
pub const QUICK_CREATE_BASE: &str = "https://console.aws.amazon.com/cloudformation/home";

/// Why checkov's CKV_AWS_61 ("does not allow assume role permission across all
/// services", which flags every account-root principal) does not apply, written into
/// the Terraform module next to the skip when the vendor principal is an account root.
pub const CKV_AWS_61_SKIP_REASON: &str = "cross-account trust of the vendor account root, \
    only with the sts:ExternalId condition (AWS's third-party pattern); \
    credvend onboard --principal ROLE_ARN narrows it to one role";

/// What the customer's role looks like: the inputs of both formats. `Debug` leaves the
/// External ID out.
#[derive(Clone, Copy)]
pub struct RoleTemplate<'a> {
    /// The mapping the role is for (descriptions and the stack name).
    pub mapping: &'a str,
    /// The role the mapping assumes: its name is the default role name, its path the
    /// role's path.
    pub role: &'a RoleArn,
    pub principal: &'a Principal,
    pub external_id: &'a str,
    pub services: &'a [TrustService],
    /// What the vendor's AssumeRole call does besides assuming (the mapping's
    /// [`SessionAction::needed`]).
    pub session: &'a [SessionAction],
    /// The role's `MaxSessionDuration` in seconds, when the mapping asks for sessions
    /// longer than IAM's default of one hour (otherwise AWS refuses its AssumeRole).
    pub max_session_seconds: Option<u64>,
    pub bucket: &'a str,
    pub prefix: Option<&'a str>,
}

impl std::fmt::Debug for RoleTemplate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleTemplate")
            .field("mapping", &self.mapping)
            .field("role", &self.role)
            .field("principal", &self.principal)
            .field("external_id", &"<redacted>")
            .field("services", &self.services)
            .field("session", &self.session)
            .field("max_session_seconds", &self.max_session_seconds)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A value the customer may change: a CloudFormation parameter, a Terraform variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    RoleName,
    BucketName,
    KeyPrefix,
    ExternalId,
}

impl Param {
    const ALL: [Param; 4] = [
        Param::RoleName,
        Param::BucketName,
        Param::KeyPrefix,
        Param::ExternalId,
    ];

    /// The placeholder that stands for the parameter inside a document.
    fn token(self) -> &'static str {
        match self {
            Param::RoleName => "\u{1}RoleName\u{1}",
            Param::BucketName => "\u{1}BucketName\u{1}",
            Param::KeyPrefix => "\u{1}KeyPrefix\u{1}",
            Param::ExternalId => "\u{1}ExternalId\u{1}",
        }
    }

    fn cloudformation(self) -> &'static str {
        match self {
            Param::RoleName => "RoleName",
            Param::BucketName => "BucketName",
            Param::KeyPrefix => "KeyPrefix",
            Param::ExternalId => "ExternalId",
        }
    }

    fn terraform(self) -> &'static str {
        match self {
            Param::RoleName => "role_name",
            Param::BucketName => "bucket_name",
            Param::KeyPrefix => "key_prefix",
            Param::ExternalId => "external_id",
        }
    }
}

/// A string split into literal text and placeholders.
enum Piece<'s> {
    Text(&'s str),
    Param(Param),
}

fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let next = Param::ALL
            .iter()
            .filter_map(|p| rest.find(p.token()).map(|at| (at, *p)))
            .min_by_key(|(at, _)| *at);
        match next {
            Some((at, param)) => {
                if at > 0 {
                    out.push(Piece::Text(&rest[..at]));
                }
                out.push(Piece::Param(param));
                rest = &rest[at + param.token().len()..];
            }
            None => {
                out.push(Piece::Text(rest));
                rest = "";
            }
        }
    }
    out
}

/// An ordered tree, since `serde_json::Value` sorts keys (see the module docs of
/// [`super`]) and a template's sections and a policy's keys have a conventional order.
#[derive(Debug, Clone)]
enum Node {
    Str(String),
    Bool(bool),
    Int(u64),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn str(s: impl Into<String>) -> Node {
        Node::Str(s.into())
    }

    fn map<const N: usize>(entries: [(&str, Node); N]) -> Node {
        Node::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }

    /// A policy document (JSON value) as a tree in IAM's conventional key order.
    fn policy(value: &Value) -> Node {
        match value {
            Value::String(s) => Node::Str(s.clone()),
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Int(n.as_u64().expect("policies hold no other numbers")),
            Value::Array(items) => Node::Seq(items.iter().map(Node::policy).collect()),
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by_key(|(k, _)| (iam_key_rank(k), (*k).clone()));
                Node::Map(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), Node::policy(v)))
                        .collect(),
                )
            }
            Value::Null => unreachable!("policy documents hold no null"),
        }
    }

    /// Every string with a placeholder as CloudFormation's `Ref` (the whole string is
    /// one parameter) or `Fn::Sub` (text around it).
    fn into_cloudformation(self) -> Node {
        match self {
            Node::Str(s) => cloudformation_string(&s),
            Node::Seq(items) => {
                Node::Seq(items.into_iter().map(Node::into_cloudformation).collect())
            }
            Node::Map(entries) => Node::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, v.into_cloudformation()))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// IAM's conventional key order; keys it does not list sort after, by name.
fn iam_key_rank(key: &str) -> usize {
    const ORDER: [&str; 12] = [
        "Version",
        "Id",
        "Statement",
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    ];
    ORDER.iter().position(|k| *k == key).unwrap_or(ORDER.len())
}

fn cloudformation_string(s: &str) -> Node {
    let pieces = pieces(s);
    match pieces.as_slice() {
        [Piece::Param(param)] => Node::map([("Ref", Node::str(param.cloudformation()))]),
        _ if pieces.iter().any(|p| matches!(p, Piece::Param(_))) => {
            let mut sub = String::new();
            for piece in &pieces {
                match piece {
                    // `${` opens a variable in Fn::Sub; `${!` is a literal `${`.
                    Piece::Text(text) => sub.push_str(&text.replace("${", "${!")),
                    Piece::Param(param) => {
                        let _ = write!(sub, "${{{}}}", param.cloudformation());
                    }
                }
            }
            Node::map([("Fn::Sub", Node::Str(sub))])
        }
        _ => Node::str(s),
    }
}

/// The validated inputs, the prefix normalised.
struct Checked<'t> {
    spec: &'t RoleTemplate<'t>,
    prefix: Option<String>,
}

impl<'a> RoleTemplate<'a> {
    fn check(&self) -> Result<Checked<'_>, PolicyError> {
        validate_bucket_name(self.bucket)?;
        validate_external_id(self.external_id)?;
        let prefix = self.prefix.map(validate_prefix).transpose()?;
        Ok(Checked { spec: self, prefix })
    }

    /// The CloudFormation template (YAML): parameters `RoleName`, `BucketName`,
    /// `KeyPrefix` (with a prefix only) and `ExternalId` (`NoEcho`), defaulting to the
    /// inputs; the role (`AWS::IAM::Role`) with the trust policy, its inline
    /// permissions policy (`AWS::IAM::Policy`); the role ARN as output `RoleArn`.
    pub fn cloudformation(&self) -> Result<String, PolicyError> {
        Ok(self.check()?.cloudformation())
    }

    /// The Terraform module: `main.tf` (`aws_iam_role` with the trust policy,
    /// `aws_iam_role_policy` with the permissions policy, both `jsonencode`d),
    /// `variables.tf` (`role_name`, `bucket_name`, `key_prefix` with a prefix only,
    /// `external_id` marked sensitive; defaults from the inputs) and `outputs.tf`
    /// (`role_arn`).
    pub fn terraform(&self) -> Result<TerraformModule, PolicyError> {
        Ok(self.check()?.terraform())
    }

    /// The stack name the quick-create link proposes: `credvend-MAPPING`, with the
    /// characters a stack name cannot hold (`_`, `.`) as `-`.
    pub fn stack_name(&self) -> String {
        let name: String = self
            .mapping
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let mut stack = format!("credvend-{name}");
        stack.truncate(128);
        stack
    }

    /// The console's quick-create link for the template hosted at `template_url`, in
    /// `region`, with every parameter (the External ID included, see
    /// docs/onboarding.md, "CloudFormation and Terraform") in the URL's fragment, which
    /// the browser does not send to the server.
    pub fn quick_create_url(
        &self,
        template_url: &str,
        region: &str,
    ) -> Result<String, PolicyError> {
        let checked = self.check()?;
        let mut url = format!(
            "{QUICK_CREATE_BASE}?region={}#/stacks/quickcreate?templateURL={}&stackName={}",
            percent_encode(region),
            percent_encode(template_url),
            percent_encode(&self.stack_name())
        );
        for (param, value) in checked.parameter_values() {
            let _ = write!(
                url,
                "&param_{}={}",
                param.cloudformation(),
                percent_encode(&value)
            );
        }
        Ok(url)
    }
}

/// The three files of the Terraform module. `Debug` shows their sizes only
/// (`variables.tf` holds the External ID).
#[derive(Clone, PartialEq, Eq)]
pub struct TerraformModule {
    pub main_tf: String,
    pub variables_tf: String,
    pub outputs_tf: String,
}

impl std::fmt::Debug for TerraformModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("TerraformModule");
        for (name, text) in self.files() {
            debug.field(name, &format_args!("{} bytes", text.len()));
        }
        debug.finish()
    }
}

impl TerraformModule {
    /// `(file name, contents)`, in the order they are written.
    pub fn files(&self) -> [(&'static str, &str); 3] {
        [
            ("main.tf", &self.main_tf),
            ("variables.tf", &self.variables_tf),
            ("outputs.tf", &self.outputs_tf),
        ]
    }
}

impl Checked<'_> {
    /// The parameters of this template and their defaults, in order.
    fn parameter_values(&self) -> Vec<(Param, String)> {
        let mut values = vec![
            (Param::RoleName, self.spec.role.name().to_owned()),
            (Param::BucketName, self.spec.bucket.to_owned()),
        ];
        if let Some(prefix) = &self.prefix {
            values.push((Param::KeyPrefix, prefix.clone()));
        }
        values.push((Param::ExternalId, self.spec.external_id.to_owned()));
        values
    }

    /// The two documents with placeholders.
    fn documents(&self) -> (Node, Node) {
        let trust = trust_value(
            self.spec.principal,
            Param::ExternalId.token(),
            self.spec.services,
            self.spec.session,
        );
        let prefix = self.prefix.as_ref().map(|_| Param::KeyPrefix.token());
        let permissions = permissions_value(Param::BucketName.token(), prefix);
        (Node::policy(&trust), Node::policy(&permissions))
    }

    fn description(&self) -> String {
        let spec = self.spec;
        let scope = match &self.prefix {
            Some(prefix) => format!("s3://{}/{prefix}/", spec.bucket),
            None => format!("s3://{}", spec.bucket),
        };
        format!(
            "Role for credvend mapping {}: trusts {} only with the External ID; \
             the five S3 actions on {scope}",
            spec.mapping,
            spec.principal.arn()
        )
    }

    fn cloudformation(&self) -> String {
        let spec = self.spec;
        let (trust, permissions) = self.documents();
        let mut parameters = Vec::new();
        for (param, default) in self.parameter_values() {
            let (pattern, description) = match param {
                Param::RoleName => (
                    r"[\w+=,.@-]{1,64}",
                    format!(
                        "Name of the role. The vendor's credvend expects {}; \
                         tell them if you change it.",
                        spec.role
                    ),
                ),
                Param::BucketName => (
                    "[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
                    "The bucket credvend's workers read and write.".to_owned(),
                ),
                Param::KeyPrefix => (
                    r"[^/*?$\s]+(/[^/*?$\s]+)*",
                    "Key prefix the workers may use (no leading or trailing slash).".to_owned(),
                ),
                Param::ExternalId => (
                    r"[\w+=,.@:/-]{2,1224}",
                    "External ID the vendor presents; leave the default.".to_owned(),
                ),
            };
            let mut entries = vec![
                ("Type".to_owned(), Node::str("String")),
                ("Description".to_owned(), Node::Str(description)),
                ("Default".to_owned(), Node::Str(default)),
                ("AllowedPattern".to_owned(), Node::str(pattern)),
            ];
            if param == Param::ExternalId {
                entries.push(("NoEcho".to_owned(), Node::Bool(true)));
            }
            parameters.push((param.cloudformation().to_owned(), Node::Map(entries)));
        }
        let mut properties = vec![
            (
                "RoleName".to_owned(),
                Node::map([("Ref", Node::str(Param::RoleName.cloudformation()))]),
            ),
            ("Path".to_owned(), Node::str(spec.role.path())),
            ("Description".to_owned(), Node::Str(self.description())),
            (
                "AssumeRolePolicyDocument".to_owned(),
                trust.into_cloudformation(),
            ),
        ];
        if let Some(seconds) = spec.max_session_seconds {
            properties.push(("MaxSessionDuration".to_owned(), Node::Int(seconds)));
        }
        let role = Node::map([
            ("Type", Node::str("AWS::IAM::Role")),
            ("Properties", Node::Map(properties)),
        ]);
        // The permissions policy as a resource of its own (AWS::IAM::Policy on the
        // role), like `aws_iam_role_policy` in the Terraform module, rather than the
        // role's `Policies` property: the same inline policy in AWS, and the form
        // moto's CloudFormation stores so that its IAM enforcement reads it (from the
        // `Policies` property it keeps a Python repr that its policy evaluation
        // rejects), which the end-to-end test relies on.
        let policy = Node::map([
            ("Type", Node::str("AWS::IAM::Policy")),
            (
                "Properties",
                Node::map([
                    ("PolicyName", Node::str(PERMISSIONS_POLICY_NAME)),
                    (
                        "Roles",
                        Node::Seq(vec![Node::map([("Ref", Node::str("CredvendRole"))])]),
                    ),
                    ("PolicyDocument", permissions.into_cloudformation()),
                ]),
            ),
        ]);
        let template = Node::map([
            ("AWSTemplateFormatVersion", Node::str("2010-09-09")),
            ("Description", Node::Str(self.description())),
            ("Parameters", Node::Map(parameters)),
            (
                "Resources",
                Node::map([("CredvendRole", role), ("CredvendSyncPolicy", policy)]),
            ),
            (
                "Outputs",
                Node::map([(
                    "RoleArn",
                    Node::map([
                        (
                            "Description",
                            Node::str("Send this ARN back to the vendor."),
                        ),
                        (
                            "Value",
                            Node::map([(
                                "Fn::GetAtt",
                                Node::Seq(vec![Node::str("CredvendRole"), Node::str("Arn")]),
                            )]),
                        ),
                    ]),
                )]),
            ),
        ]);
        let mut out = format!(
            "# The IAM role credvend assumes for mapping {mapping}: generated by\n\
             # `credvend onboard {mapping} --format cloudformation`. Its two policies are\n\
             # what `credvend policy trust` and `credvend policy permissions` print.\n",
            mapping = spec.mapping
        );
        yaml_map_entries(&mut out, node_entries(&template), 0);
        out
    }

    fn terraform(&self) -> TerraformModule {
        let spec = self.spec;
        let (trust, permissions) = self.documents();
        let skip = match spec.principal {
            Principal::Account(_) => {
                format!("  # checkov:skip=CKV_AWS_61:{CKV_AWS_61_SKIP_REASON}\n")
            }
            Principal::Role(_) => String::new(),
        };
        let mut main_tf = String::new();
        for line in [
            format!(
                "# The IAM role credvend assumes for mapping {}: generated by",
                spec.mapping
            ),
            format!(
                "# `credvend onboard {} --format terraform`. Its two policies are what",
                spec.mapping
            ),
            "# `credvend policy trust` and `credvend policy permissions` print.".to_owned(),
            String::new(),
            "terraform {".to_owned(),
            "  required_providers {".to_owned(),
            "    aws = {".to_owned(),
            "      source  = \"hashicorp/aws\"".to_owned(),
            "      version = \">= 4.0\"".to_owned(),
            "    }".to_owned(),
            "  }".to_owned(),
            "}".to_owned(),
            String::new(),
            "resource \"aws_iam_role\" \"credvend\" {".to_owned(),
        ] {
            main_tf.push_str(&line);
            main_tf.push('\n');
        }
        main_tf.push_str(&skip);
        let _ = write!(
            main_tf,
            "  name        = var.role_name\n  path        = {path}\n  description = {description}\n",
            path = hcl_string(spec.role.path()),
            description = hcl_string(&self.description()),
        );
        if let Some(seconds) = spec.max_session_seconds {
            let _ = writeln!(main_tf, "  max_session_duration = {seconds}");
        }
        main_tf.push_str("  assume_role_policy = jsonencode(");
        hcl_value(&mut main_tf, &trust, 2);
        let _ = write!(
            main_tf,
            ")\n}}\n\nresource \"aws_iam_role_policy\" \"credvend_sync\" {{\n  \
             name = {name}\n  role = aws_iam_role.credvend.id\n  policy = jsonencode(",
            name = hcl_string(PERMISSIONS_POLICY_NAME)
        );
        hcl_value(&mut main_tf, &permissions, 2);
        main_tf.push_str(")\n}\n");

        let mut variables_tf = String::new();
        for (param, default) in self.parameter_values() {
            let (description, validation) = match param {
                Param::RoleName => (
                    format!(
                        "Name of the role. The vendor's credvend expects {}; tell them if you change it.",
                        spec.role
                    ),
                    Some((
                        r"^[\w+=,.@-]{1,64}$",
                        "1 to 64 of A-Z a-z 0-9 _ + = , . @ -",
                    )),
                ),
                Param::BucketName => (
                    "The bucket credvend's workers read and write.".to_owned(),
                    Some((
                        "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
                        "an S3 bucket name: 3 to 63 of a-z 0-9 . -",
                    )),
                ),
                Param::KeyPrefix => (
                    "Key prefix the workers may use (no leading or trailing slash).".to_owned(),
                    Some((
                        r"^[^/*?$\s]+(/[^/*?$\s]+)*$",
                        "a key prefix without leading or trailing slash, '//', '*', '?', '$' or spaces",
                    )),
                ),
                Param::ExternalId => (
                    "External ID the vendor presents; leave the default.".to_owned(),
                    None,
                ),
            };
            let _ = write!(
                variables_tf,
                "{sep}variable \"{name}\" {{\n  description = {description}\n  type        = string\n  default     = {default}\n",
                sep = if variables_tf.is_empty() { "" } else { "\n" },
                name = param.terraform(),
                description = hcl_string(&description),
                default = hcl_string(&default),
            );
            if param == Param::ExternalId {
                variables_tf.push_str("  sensitive   = true\n");
            }
            if let Some((regex, rule)) = validation {
                let _ = write!(
                    variables_tf,
                    "\n  validation {{\n    condition     = can(regex({regex}, var.{name}))\n    error_message = {message}\n  }}\n",
                    regex = hcl_string(regex),
                    name = param.terraform(),
                    message = hcl_string(&format!("Must be {rule}.")),
                );
            }
            variables_tf.push_str("}\n");
        }

        let outputs_tf = "output \"role_arn\" {\n  \
             description = \"Send this ARN back to the vendor.\"\n  \
             value       = aws_iam_role.credvend.arn\n}\n"
            .to_owned();
        TerraformModule {
            main_tf,
            variables_tf,
            outputs_tf,
        }
    }
}

fn node_entries(node: &Node) -> &[(String, Node)] {
    match node {
        Node::Map(entries) => entries,
        _ => unreachable!("a template is a map"),
    }
}

// --- YAML (block style; every string double-quoted, JSON escapes) -----------------

fn yaml_key(key: &str) -> String {
    let plain = key.split("::").all(|part| {
        part.split(':').all(|word| {
            word.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && word.chars().all(|c| c.is_ascii_alphanumeric())
        })
    });
    if plain {
        key.to_owned()
    } else {
        yaml_scalar(&Node::str(key))
    }
}

fn yaml_scalar(node: &Node) -> String {
    match node {
        Node::Str(s) => serde_json::to_string(s).expect("strings serialise"),
        Node::Bool(b) => b.to_string(),
        Node::Int(n) => n.to_string(),
        Node::Seq(items) if items.is_empty() => "[]".to_owned(),
        Node::Map(entries) if entries.is_empty() => "{}".to_owned(),
        _ => unreachable!("not a scalar"),
    }
}

fn is_block(node: &Node) -> bool {
    matches!(node, Node::Seq(items) if !items.is_empty())
        || matches!(node, Node::Map(entries) if !entries.is_empty())
}

fn yaml_map_entries(out: &mut String, entries: &[(String, Node)], indent: usize) {
    for (key, value) in entries {
        let _ = write!(out, "{:indent$}{}:", "", yaml_key(key));
        yaml_after_key(out, value, indent);
    }
}

fn yaml_after_key(out: &mut String, value: &Node, indent: usize) {
    match value {
        Node::Map(entries) if is_block(value) => {
            out.push('\n');
            yaml_map_entries(out, entries, indent + 2);
        }
        Node::Seq(items) if is_block(value) => {
            out.push('\n');
            yaml_seq_items(out, items, indent + 2);
        }
        scalar => {
            let _ = writeln!(out, " {}", yaml_scalar(scalar));
        }
    }
}

fn yaml_seq_items(out: &mut String, items: &[Node], indent: usize) {
    for item in items {
        let mut block = String::new();
        match item {
            Node::Map(entries) if is_block(item) => {
                yaml_map_entries(&mut block, entries, indent + 2)
            }
            Node::Seq(nested) if is_block(item) => yaml_seq_items(&mut block, nested, indent + 2),
            scalar => {
                let _ = writeln!(out, "{:indent$}- {}", "", yaml_scalar(scalar));
                continue;
            }
        }
        // The item's first line goes on the dash's line.
        let _ = write!(out, "{:indent$}- {}", "", &block[indent + 2..]);
    }
}

// --- HCL (Terraform) ----------------------------------------------------------------

/// A Terraform string expression: a placeholder alone is the bare `var.NAME`; otherwise
/// a quoted template whose placeholders are `${var.NAME}` and whose literal `${` and
/// `%{` are escaped.
fn hcl_string(s: &str) -> String {
    let pieces = pieces(s);
    if let [Piece::Param(param)] = pieces.as_slice() {
        return format!("var.{}", param.terraform());
    }
    let mut out = String::from("\"");
    for piece in &pieces {
        match piece {
            Piece::Param(param) => {
                let _ = write!(out, "${{var.{}}}", param.terraform());
            }
            Piece::Text(text) => {
                let mut chars = text.chars().peekable();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        '$' | '%' if chars.peek() == Some(&'{') => {
                            out.push(c);
                            out.push(c);
                        }
                        c if c.is_control() => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
            }
        }
    }
    out.push('"');
    out
}

fn hcl_key(key: &str) -> String {
    let identifier = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier {
        key.to_owned()
    } else {
        hcl_string(key)
    }
}

/// A value of `jsonencode(...)`, its closing bracket at `indent`.
fn hcl_value(out: &mut String, node: &Node, indent: usize) {
    match node {
        Node::Str(s) => out.push_str(&hcl_string(s)),
        Node::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Node::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Node::Seq(items) if items.iter().all(|i| matches!(i, Node::Str(_))) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                hcl_value(out, item, indent);
            }
            out.push(']');
        }
        Node::Seq(items) => {
            out.push_str("[\n");
            for item in items {
                let _ = write!(out, "{:width$}", "", width = indent + 2);
                hcl_value(out, item, indent + 2);
                out.push_str(",\n");
            }
            let _ = write!(out, "{:indent$}]", "");
        }
        Node::Map(entries) => {
            out.push_str("{\n");
            for (key, value) in entries {
                let _ = write!(out, "{:width$}{} = ", "", hcl_key(key), width = indent + 2);
                hcl_value(out, value, indent + 2);
                out.push('\n');
            }
            let _ = write!(out, "{:indent$}}}", "");
        }
    }
}

// --- URLs ---------------------------------------------------------------------------

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}
