//! `credvend onboard`: what one mapping's customer installs (the two policies as JSON,
//! a CloudFormation template or a Terraform module) and the steps, on stderr.

use std::path::Path;

use anyhow::Context as _;

use credvend::config::Mapping;
use credvend::policy::{self, Principal, SessionAction};

use super::args::{ConfigArg, Onboard, OnboardFormat};
use super::{block_on, load_mapping, own_principal};
use crate::Failure;

/// `credvend onboard`: the documents one mapping's customer installs, and the check.
///
/// The documents are data: one JSON object on stdout (`trust_policy`, and with
/// `--bucket` `permissions_policy`), or one file each with `--out`, so they can be
/// handed over or piped (`| jq .trust_policy`) as they are; with `--format
/// cloudformation|terraform` a template or module that creates the role with both
/// (`policy::RoleTemplate`). The steps are guidance for the operator and go to stderr.
pub(crate) fn onboard(args: Onboard) -> Result<(), Failure> {
    let Onboard {
        mapping,
        config: ConfigArg { config: path },
        bucket,
        prefix,
        principal,
        service,
        format,
        out,
        template_url,
    } = args;
    // The command line first, before the configuration or STS is read.
    let format_name = match format {
        OnboardFormat::Json => "json",
        OnboardFormat::Cloudformation => "cloudformation",
        OnboardFormat::Terraform => "terraform",
    };
    if format != OnboardFormat::Json && bucket.is_none() {
        return Err(Failure::Usage(format!(
            "--format {format_name} needs --bucket: the {} creates the role with both policies",
            if format == OnboardFormat::Terraform {
                "module"
            } else {
                "template"
            }
        )));
    }
    if format == OnboardFormat::Terraform && out.is_none() {
        return Err(Failure::Usage(
            "--format terraform writes a module of three files (main.tf, variables.tf, \
             outputs.tf): pass --out DIR"
                .to_owned(),
        ));
    }
    if let Some(url) = &template_url {
        if format != OnboardFormat::Cloudformation {
            return Err(Failure::Usage(format!(
                "--template-url is for --format cloudformation (the quick-create link), not --format {format_name}"
            )));
        }
        if !url.starts_with("https://")
            || url.len() == "https://".len()
            || url.contains(char::is_whitespace)
        {
            return Err(Failure::Usage(format!(
                "--template-url {url:?}: expected the https:// URL the template is hosted at (e.g. on S3)"
            )));
        }
    }
    match (&out, format) {
        (Some(out), OnboardFormat::Cloudformation) if out.is_dir() => {
            return Err(Failure::Usage(format!(
                "--out {}: is a directory; --format cloudformation writes one file",
                out.display()
            )));
        }
        (Some(out), OnboardFormat::Json | OnboardFormat::Terraform)
            if out.exists() && !out.is_dir() =>
        {
            return Err(Failure::Usage(format!(
                "--out {}: is not a directory; --format {format_name} writes files into one",
                out.display()
            )));
        }
        _ => {}
    }

    let (loaded, m) = load_mapping(&path, &mapping)?;
    let Some(external_id) = m.external_id.as_ref() else {
        return Err(Failure::Usage(format!(
            "mapping '{mapping}' has no External ID; generate one with `credvend external-id new` and set external_id"
        )));
    };
    let usage = |e: policy::PolicyError| Failure::Usage(e.to_string());
    // Inputs AWS would refuse are refused before STS is asked for the principal.
    if let Some(bucket) = &bucket {
        policy::validate_bucket_name(bucket).map_err(usage)?;
    }
    if let Some(prefix) = &prefix {
        policy::validate_prefix(prefix).map_err(usage)?;
    }
    let principal = match (principal, &loaded.sts.source_role_arn) {
        (Some(p), _) => Principal::parse(&p).map_err(usage)?,
        // Chaining: customer roles are assumed by the vendor service role.
        (None, Some(source)) => Principal::role(source).map_err(usage)?,
        (None, None) => block_on(own_principal(Some(path.clone())))??,
    };
    // What the daemon's AssumeRole for this mapping needs of the role beyond the
    // External ID: the session actions in the trust policy and, for sessions longer
    // than IAM's default hour, the role's MaxSessionDuration.
    let session = SessionAction::needed(!m.tags.is_empty(), m.source_identity.is_some());
    let max_session_seconds = Some(m.session_duration.as_secs()).filter(|&seconds| seconds > 3600);
    let mut verify_cmd = format!("credvend verify {mapping} --config {}", path.display());
    if let Some(bucket) = &bucket {
        verify_cmd.push_str(&format!(" --bucket {bucket}"));
    }
    if let Some(prefix) = &prefix {
        verify_cmd.push_str(&format!(" --prefix {prefix}"));
    }
    if let Some(bucket) = &bucket
        && format != OnboardFormat::Json
    {
        let template = policy::RoleTemplate {
            mapping: &mapping,
            role: &m.role_arn,
            principal: &principal,
            external_id: external_id.expose(),
            services: &service,
            session: &session,
            max_session_seconds,
            bucket,
            prefix: prefix.as_deref(),
        };
        return if format == OnboardFormat::Cloudformation {
            onboard_cloudformation(
                &template,
                &m,
                out.as_deref(),
                template_url.as_deref(),
                &verify_cmd,
            )
        } else {
            let dir = out.as_deref().expect("checked above");
            onboard_terraform(&template, &m, dir, &verify_cmd)
        };
    }

    let trust = policy::render_trust_policy(&principal, external_id.expose(), &service, &session)
        .map_err(usage)?;
    let permissions = bucket
        .as_deref()
        .map(|bucket| policy::render_permissions_policy(bucket, prefix.as_deref()))
        .transpose()
        .map_err(usage)?;

    // Where each document went, for the steps.
    let (trust_at, permissions_at) = match &out {
        Some(dir) => {
            create_out_dir(dir)?;
            let write = |name: &str, text: &str| -> Result<String, Failure> {
                let file = dir.join(name);
                write_out_file(&file, &format!("{text}\n"))?;
                Ok(file.display().to_string())
            };
            let trust_at = write("trust-policy.json", &trust)?;
            let permissions_at = permissions
                .as_deref()
                .map(|text| write("permissions-policy.json", text))
                .transpose()?;
            (trust_at, permissions_at)
        }
        None => {
            let parse = |text: &str| {
                serde_json::from_str::<serde_json::Value>(text)
                    .context("a rendered policy is not JSON")
                    .map_err(Failure::Runtime)
            };
            let mut documents = serde_json::Map::new();
            documents.insert("trust_policy".into(), parse(&trust)?);
            if let Some(text) = &permissions {
                documents.insert("permissions_policy".into(), parse(text)?);
            }
            let text = serde_json::to_string_pretty(&documents)
                .context("cannot encode the documents")
                .map_err(Failure::Runtime)?;
            outln!("{text}")?;
            (
                "`trust_policy` in the JSON on stdout".to_owned(),
                permissions
                    .as_ref()
                    .map(|_| "`permissions_policy` in the JSON on stdout".to_owned()),
            )
        }
    };
    eprintln!("Onboarding mapping '{mapping}': role {}", m.role_arn);
    eprintln!(
        "1. The customer sets the trust policy on the role (it trusts {} only with the External ID): {trust_at}",
        principal.arn()
    );
    match (&bucket, permissions_at) {
        (Some(bucket), Some(at)) => {
            eprintln!("2. ... and attaches the permissions policy (bucket {bucket}): {at}")
        }
        _ => eprintln!(
            "2. ... and attaches the permissions policy: rerun with --bucket NAME to produce it."
        ),
    }
    eprintln!("3. Then check it: {verify_cmd}");
    eprintln!(
        "(Or hand over a template that creates the role with both: --format cloudformation or --format terraform.)"
    );
    Ok(())
}

/// `onboard --format cloudformation`: the template on stdout or in `out`, the
/// quick-create link and the steps on stderr.
pub(crate) fn onboard_cloudformation(
    template: &policy::RoleTemplate<'_>,
    m: &Mapping,
    out: Option<&Path>,
    template_url: Option<&str>,
    verify_cmd: &str,
) -> Result<(), Failure> {
    let usage = |e: policy::PolicyError| Failure::Usage(e.to_string());
    let yaml = template.cloudformation().map_err(usage)?;
    let link = template_url
        .map(|url| template.quick_create_url(url, m.region.as_ref()))
        .transpose()
        .map_err(usage)?;
    let at = match out {
        Some(file) => {
            if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_out_dir(parent)?;
            }
            write_out_file(file, &yaml)?;
            file.display().to_string()
        }
        None => {
            out!("{yaml}")?;
            "stdout".to_owned()
        }
    };
    let stack = template.stack_name();
    eprintln!(
        "Onboarding mapping '{}': role {} (CloudFormation template: {at})",
        template.mapping, m.role_arn
    );
    match link {
        Some(link) => {
            eprintln!(
                "1. The customer opens this link signed in to account {} (region {}), \
                 acknowledges that it creates a named IAM role, and creates the stack:",
                m.role_arn.account(),
                m.region
            );
            eprintln!("   {link}");
        }
        None => {
            eprintln!(
                "1. The customer creates the stack in account {} from the template, e.g. \
                 `aws cloudformation deploy --template-file role.yaml --stack-name {stack} \
                 --capabilities CAPABILITY_NAMED_IAM`.",
                m.role_arn.account()
            );
            eprintln!(
                "   For a console quick-create link, host the template (e.g. on S3) and rerun \
                 with --template-url URL."
            );
        }
    }
    eprintln!(
        "2. The stack's output RoleArn is the role credvend assumes: {} unless the customer \
         changed RoleName.",
        m.role_arn
    );
    eprintln!("3. Then check it: {verify_cmd}");
    Ok(())
}

/// `onboard --format terraform`: the module's files into `dir`, the steps on stderr.
pub(crate) fn onboard_terraform(
    template: &policy::RoleTemplate<'_>,
    m: &Mapping,
    dir: &Path,
    verify_cmd: &str,
) -> Result<(), Failure> {
    let module = template
        .terraform()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    create_out_dir(dir)?;
    let mut written = Vec::new();
    for (name, text) in module.files() {
        let file = dir.join(name);
        write_out_file(&file, text)?;
        written.push(file.display().to_string());
    }
    eprintln!(
        "Onboarding mapping '{}': role {} (Terraform module: {})",
        template.mapping,
        m.role_arn,
        written.join(", ")
    );
    eprintln!(
        "1. The customer applies the module in account {} (`terraform init && terraform apply` \
         in {}, or as a module block with source = that directory).",
        m.role_arn.account(),
        dir.display()
    );
    eprintln!(
        "2. Its output role_arn is the role credvend assumes: {} unless the customer changed \
         role_name.",
        m.role_arn
    );
    eprintln!("3. Then check it: {verify_cmd}");
    Ok(())
}

/// Creates `--out`'s directory (and its parents) if missing.
pub(crate) fn create_out_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
        .map_err(Failure::Runtime)
}

/// Writes one onboarding file, replacing it; a new file is created owner-only (it
/// holds the mapping's External ID).
pub(crate) fn write_out_file(file: &Path, text: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", file.display()))
        .map_err(Failure::Runtime)
}
