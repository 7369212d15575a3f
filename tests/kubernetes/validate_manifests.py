"""Validate deploy/kubernetes/ offline and strictly; run by tests/kubernetes_manifests.rs.

Usage: validate_manifests.py DIR [--extract-config OUT]
       validate_manifests.py --each DIR...

Every Kubernetes object is walked against the model classes of the official
`kubernetes` Python client (generated from the API's OpenAPI schema; pinned in
scripts/python-requirements.txt): each class's `attribute_map` gives the JSON field
names it has and `openapi_types` their types, so an unknown field, a field in the wrong
place (one object's field set on another) or a value of the wrong type is an error
naming its path. Then the client deserializes the object, which enforces its required
fields (not enum values: this client does not check them; the checks below pin the ones
that matter, e.g. the seccomp profile). The usual JSON-schema validators accept unknown
fields; this does not.

Objects the client has no model for are checked by hand against an allow-list of the
fields these manifests may use: the Kustomization (kustomize's own file) and the
Prometheus Operator's PodMonitor (a CRD). The allow-list is deliberately small: a field
not in it is an error even when the real CRD has it, so using a new one means adding it
here after checking the CRD's schema.

Then the manifests are checked against the config they ship (ports, paths, probes, the
worker's URL and token) and against systemd/credvend.service's hardening.

With --extract-config OUT, the config Secret's files are written to OUT (mode 0600)
and the credvend container's CREDVEND_* environment is printed, one NAME=VALUE a line,
so the caller can run `credvend check-config` on exactly what the pod would load.

Exit status 0 when everything holds; 1 with one "error: PATH: REASON" line per problem
on stderr. With --each, every DIR is checked in this one process (the client's import
is the slow part): "== DIR" and its "error: ..." lines on stdout, exit status 0.
"""

import datetime
import hashlib
import os
import re
import sys
import tomllib
import urllib.parse

import kubernetes.client
import kubernetes.client.models as models
import yaml

ERRORS = []


def error(path, reason):
    ERRORS.append(f"{path}: {reason}")


# --- strict walk against the client's models -----------------------------------------

PRIMITIVES = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "date": (str, datetime.date),
    "datetime": (str, datetime.datetime),
}


def walk(value, type_name, path):
    """Check `value` against the client's type string `type_name`."""
    if type_name == "object":
        return  # IntOrString, Quantity, free-form JSON: any scalar or structure.
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            error(path, f"expected a list ({type_name}), got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            walk(item, m.group(1), f"{path}[{i}]")
        return
    m = re.fullmatch(r"dict\((\w+), (.+)\)", type_name)
    if m:
        if not isinstance(value, dict):
            error(path, f"expected a map ({type_name}), got {type(value).__name__}")
            return
        for k, v in value.items():
            if not isinstance(k, str):
                error(f"{path}.{k}", f"map key must be a string, got {type(k).__name__}")
            walk(v, m.group(2), f"{path}.{k}")
        return
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name])
        if type_name in ("int", "float") and isinstance(value, bool):
            ok = False
        if not ok:
            error(path, f"expected {type_name}, got {type(value).__name__} {value!r}")
        return
    klass = getattr(models, type_name, None)
    if klass is None:
        error(path, f"the client has no model {type_name}")
        return
    if not isinstance(value, dict):
        error(path, f"expected an object ({type_name}), got {type(value).__name__}")
        return
    json_to_attr = {json: attr for attr, json in klass.attribute_map.items()}
    for key, item in value.items():
        attr = json_to_attr.get(key)
        if attr is None:
            error(
                f"{path}.{key}",
                f"unknown field {key!r} in {type_name} "
                f"(its fields: {', '.join(sorted(json_to_attr))})",
            )
            continue
        walk(item, klass.openapi_types[attr], f"{path}.{key}")


def model_name(api_version, kind):
    """apps/v1 Deployment -> V1Deployment (the client's naming)."""
    version = api_version.split("/")[-1]
    return version[0].upper() + version[1:] + kind


def check_api_object(doc, where):
    name = model_name(str(doc.get("apiVersion", "")), str(doc.get("kind", "")))
    klass = getattr(models, name, None)
    if klass is None:
        error(where, f"no Kubernetes model for {doc.get('apiVersion')} {doc.get('kind')}")
        return
    before = len(ERRORS)
    walk(doc, name, where)
    if len(ERRORS) == before:
        # Required fields: the models' setters check them.
        try:
            kubernetes.client.ApiClient()._ApiClient__deserialize(doc, name)
        except (ValueError, TypeError) as e:
            error(where, f"the {name} model refuses it: {e}")


# --- hand-checked kinds: small allow-lists -------------------------------------------

# None: a leaf (its value's type is given); a dict: the allowed fields of an object;
# [x]: a list of x.
STR, INT, BOOL = str, int, bool
LABEL_MAP = {"*": STR}
KUSTOMIZATION = {
    "apiVersion": STR,
    "kind": STR,
    "namespace": STR,
    "labels": [{"pairs": LABEL_MAP, "includeSelectors": BOOL, "includeTemplates": BOOL}],
    "resources": [STR],
    "images": [{"name": STR, "newName": STR, "newTag": STR, "digest": STR}],
}
PODMONITOR = {
    "apiVersion": STR,
    "kind": STR,
    "metadata": {"name": STR, "namespace": STR, "labels": LABEL_MAP},
    "spec": {
        "selector": {"matchLabels": LABEL_MAP},
        "podMetricsEndpoints": [
            {"port": STR, "path": STR, "interval": STR, "scrapeTimeout": STR, "scheme": STR}
        ],
    },
}


def check_allow_list(value, shape, path):
    if isinstance(shape, list):
        if not isinstance(value, list):
            error(path, f"expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            check_allow_list(item, shape[0], f"{path}[{i}]")
    elif isinstance(shape, dict):
        if not isinstance(value, dict):
            error(path, f"expected an object, got {type(value).__name__}")
            return
        for key, item in value.items():
            if key in shape:
                check_allow_list(item, shape[key], f"{path}.{key}")
            elif "*" in shape:
                check_allow_list(item, shape["*"], f"{path}.{key}")
            else:
                error(
                    f"{path}.{key}",
                    f"unknown field {key!r} (allowed here: {', '.join(sorted(shape))})",
                )
    elif not isinstance(value, shape) or (shape is INT and isinstance(value, bool)):
        error(path, f"expected {shape.__name__}, got {type(value).__name__} {value!r}")


# --- the manifests against the config and the hardening ------------------------------


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def check_consistency(objects, kustomization, files):
    by_kind = {}
    for doc in objects:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    listed = set(kustomization.get("resources", []))
    for f in files:
        if f != "kustomization.yaml" and f != "podmonitor.yaml" and f not in listed:
            error(f, "not listed in kustomization.yaml's resources")
    for r in listed:
        if r not in files:
            error("kustomization.yaml", f"resource {r} does not exist")

    deployment = by_kind["Deployment"]["sync-worker-acme"]
    template = deployment["spec"]["template"]
    pod = template["spec"]
    where = "deployment.yaml"
    if template["metadata"]["labels"].items() < deployment["spec"]["selector"]["matchLabels"].items():
        error(where, "the selector does not match the pod template's labels")

    # The sidecar: a native sidecar (init container, restartPolicy Always).
    sidecars = [c for c in pod.get("initContainers", []) if c["name"] == "credvend"]
    if len(sidecars) != 1:
        error(where, "no init container named credvend")
        return
    cv = sidecars[0]
    if cv.get("restartPolicy") != "Always":
        error(f"{where}: credvend", "not a native sidecar: restartPolicy must be Always")
    if any(c["name"] == "credvend" for c in pod.get("containers", [])):
        error(where, "credvend must be an init container (native sidecar), not a container")

    # The config it loads, from the Secret it mounts.
    config_secret = by_kind["Secret"]["credvend-config"]
    data = config_secret["stringData"]
    config = tomllib.loads(data["credvend.toml"])
    mappings = {}
    for name, text in data.items():
        if name != "credvend.toml":
            mappings.update(tomllib.loads(text).get("mappings", {}))
    for pattern in config.get("include", []):
        if not any(re.fullmatch(pattern.replace(".", r"\.").replace("*", ".*"), n) for n in data):
            error("secret-config.yaml", f"include {pattern!r} matches no key of the Secret")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in cv.get("volumeMounts", [])}
    args = cv.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    config_dir = os.path.dirname(config_path or "")
    m = mounts.get(config_dir)
    if not m or volumes[m["name"]].get("secret", {}).get("secretName") != "credvend-config":
        error(f"{where}: credvend", f"{config_dir} is not the credvend-config Secret's mount")
    elif not m.get("readOnly"):
        error(f"{where}: credvend", "the config must be mounted readOnly")
    if os.path.basename(config_path or "") not in data:
        error(f"{where}: credvend", f"--config {config_path} is not a key of the Secret")

    server = config.get("server", {})
    listen = server.get("listen", [])
    admin = server.get("admin_listen")
    if not admin or not server.get("admin_allow_non_loopback") or not admin.startswith("0.0.0.0:"):
        error("secret-config.yaml", "admin_listen must bind the pod IP (0.0.0.0, admin_allow_non_loopback) for kubelet probes")
    if server.get("allow_non_loopback") or not all(l.startswith("127.0.0.1:") for l in listen):
        error("secret-config.yaml", "the credential listener must stay on the pod's loopback")
    admin_port = port_of(admin)
    named = {p["name"]: p["containerPort"] for p in cv.get("ports", [])}
    if admin_port not in named.values():
        error(f"{where}: credvend", f"no containerPort {admin_port} (admin_listen)")
    for l in listen:
        if port_of(l) in named.values():
            error(f"{where}: credvend", f"the credential port {port_of(l)} must not be a containerPort")

    def probe(name, path):
        p = cv.get(name)
        if not p or "httpGet" not in p:
            error(f"{where}: credvend", f"no {name} (httpGet {path})")
            return
        get = p["httpGet"]
        port = named.get(get["port"], get["port"])
        if port != admin_port:
            error(f"{where}: credvend.{name}", f"port {get['port']} is not admin_listen's {admin_port}")
        if get.get("path") != path:
            error(f"{where}: credvend.{name}", f"path {get.get('path')} should be {path}")

    probe("startupProbe", "/readyz")
    probe("readinessProbe", "/readyz")
    probe("livenessProbe", "/healthz")

    grace = config.get("server", {}).get("shutdown_grace", "10s")
    grace_s = int(grace.rstrip("s"))
    if pod.get("terminationGracePeriodSeconds", 30) <= grace_s:
        error(where, f"terminationGracePeriodSeconds must exceed shutdown_grace ({grace})")

    annotations = template["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != str(admin_port) or annotations.get("prometheus.io/path") != "/metrics":
        error(f"{where}: annotations", f"prometheus.io/* must scrape /metrics on {admin_port}")

    skipped = annotations.get("eks.amazonaws.com/skip-containers", "").split(",")
    if sorted(c["name"] for c in pod.get("containers", [])) != sorted(skipped):
        error(f"{where}: annotations", "eks.amazonaws.com/skip-containers must name every container but credvend (the base identity is credvend's only)")

    env = {e["name"]: e.get("value") for e in cv.get("env", [])}
    if env.get("CREDVEND_CONTROL__SOCKET") != "":
        error(f"{where}: credvend", "CREDVEND_CONTROL__SOCKET must be set empty (see the comment there)")

    # The worker: its URL names a mapping on the credential port, its token opens it.
    workers = pod.get("containers", [])
    if len(workers) != 1:
        error(where, "expected exactly one worker container")
        return
    w = workers[0]
    wenv = {e["name"]: e.get("value") for e in w.get("env", [])}
    uri = urllib.parse.urlsplit(wenv.get("AWS_CONTAINER_CREDENTIALS_FULL_URI", ""))
    mapping = uri.path.removeprefix("/v1/credentials/")
    if uri.scheme != "http" or uri.hostname != "127.0.0.1" or uri.port not in [port_of(l) for l in listen]:
        error(f"{where}: worker", f"AWS_CONTAINER_CREDENTIALS_FULL_URI {uri.geturl()} is not on a listen address ({listen})")
    if not uri.path.startswith("/v1/credentials/") or mapping not in mappings:
        error(f"{where}: worker", f"AWS_CONTAINER_CREDENTIALS_FULL_URI names no configured mapping ({sorted(mappings)})")
    if any(name.startswith("CREDVEND_") for name in wenv):
        error(f"{where}: worker", "the worker has CREDVEND_* variables")
    token_path = wenv.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "")
    token = None
    for wm in w.get("volumeMounts", []):
        if token_path.startswith(wm["mountPath"].rstrip("/") + "/"):
            rel = token_path[len(wm["mountPath"].rstrip("/")) + 1:]
            vol = volumes[wm["name"]]
            sources = [s["secret"] for s in vol.get("projected", {}).get("sources", []) if "secret" in s]
            if "secret" in vol:
                sources.append({"name": vol["secret"]["secretName"], "items": vol["secret"].get("items")})
            for s in sources:
                items = s.get("items") or []
                keys = {i["path"]: i["key"] for i in items}
                secret = by_kind["Secret"].get(s["name"], {}).get("stringData", {})
                key = keys.get(rel, rel if not items else None)
                if key in secret:
                    token = secret[key]
            if not wm.get("readOnly"):
                error(f"{where}: worker", "the token volume must be mounted readOnly")
    if token is None:
        error(f"{where}: worker", f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {token_path} is in no mounted Secret")
    else:
        if token.endswith("\n"):
            error("secret-worker-token.yaml", "the token ends in a newline (the SDKs send it as is)")
        digest = hashlib.sha256(token.encode()).hexdigest()
        if mapping in mappings and digest not in mappings[mapping].get("token_sha256", []):
            error("secret-worker-token.yaml", f"the token's SHA-256 is not in mapping {mapping}'s token_sha256")
    for wm in w.get("volumeMounts", []):
        if wm["name"] == "credvend-config":
            error(f"{where}: worker", "the worker must not mount credvend's config")

    # systemd/credvend.service's hardening (NoNewPrivileges, CapabilityBoundingSet=,
    # ProtectSystem=strict, SystemCallFilter, a non-root user).
    psc = pod.get("securityContext", {})
    for c in [cv, w]:
        sc = c.get("securityContext", {})
        name = f"{where}: {c['name']}.securityContext"
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            error(name, "runAsNonRoot must be true")
        if sc.get("readOnlyRootFilesystem") is not True:
            error(name, "readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            error(name, "allowPrivilegeEscalation must be false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            error(name, "capabilities must drop ALL and add none")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            error(name, "seccompProfile must be RuntimeDefault")
    if cv.get("securityContext", {}).get("runAsUser") != 65532:
        error(f"{where}: credvend.securityContext", "runAsUser must be 65532 (the image's user)")

    # PodMonitor: the same port and path.
    for pm in by_kind.get("PodMonitor", {}).values():
        labels = template["metadata"]["labels"]
        for k, v in pm["spec"]["selector"]["matchLabels"].items():
            if labels.get(k) != v:
                error("podmonitor.yaml", f"selector {k}={v} matches no label of the pod template")
        for ep in pm["spec"]["podMetricsEndpoints"]:
            if named.get(ep.get("port")) != admin_port or ep.get("path") != "/metrics":
                error("podmonitor.yaml", f"must scrape /metrics on port {admin_port}'s name")
    return cv


def validate(directory, extract=None):
    """Check one directory; the problems go to ERRORS."""
    files = sorted(f for f in os.listdir(directory) if f.endswith(".yaml"))
    if not files:
        error(directory, "no manifests")
        return
    objects, kustomization = [], None
    for f in files:
        with open(os.path.join(directory, f)) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d is not None]
        for i, doc in enumerate(docs):
            where = f if len(docs) == 1 else f"{f}[{i}]"
            kind = doc.get("kind")
            if kind == "Kustomization":
                check_allow_list(doc, KUSTOMIZATION, where)
                kustomization = doc
            elif kind == "PodMonitor":
                check_allow_list(doc, PODMONITOR, where)
                objects.append(doc)
            else:
                check_api_object(doc, where)
                objects.append(doc)
    if kustomization is None:
        error(directory, "no kustomization.yaml")
    if not ERRORS:
        check_consistency(objects, kustomization, files)
    if not ERRORS and extract:
        secret = next(d for d in objects if d["kind"] == "Secret" and d["metadata"]["name"] == "credvend-config")
        for name, text in secret["stringData"].items():
            path = os.path.join(extract, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
        deployment = next(d for d in objects if d["kind"] == "Deployment")
        cv = next(c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "credvend")
        for e in cv.get("env", []):
            if e["name"].startswith("CREDVEND_"):
                print(f"{e['name']}={e.get('value', '')}")


def main(argv):
    if argv[1] == "--each":
        # One interpreter for many directories (importing the client takes a second):
        # "== DIR" then that directory's "error: ..." lines, on stdout; exit 0.
        for directory in argv[2:]:
            ERRORS.clear()
            validate(directory)
            print(f"== {directory}")
            for e in ERRORS:
                print(f"error: {e}")
        return 0
    extract = argv[argv.index("--extract-config") + 1] if "--extract-config" in argv else None
    validate(argv[1], extract)
    for e in ERRORS:
        print(f"error: {e}", file=sys.stderr)
    return 1 if ERRORS else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
