"""deploy/kubernetes: schema-valid manifests that keep bgpd's contract.

Every built-in kind is validated (strict: unknown fields are errors) against
a pinned Kubernetes version with kubernetes-validate; the ServiceMonitor CRD
is checked by hand. The kustomization and the calico-node sidecar patch are
built with the real kustomize (`kubectl kustomize`) and validated as built.
The contract checks catch what a schema cannot: probes on the port bgpd
listens on, $(HOST_IP) defined before it is used, NODENAME from the node,
exactly two capabilities, Service/ServiceMonitor selecting the pods.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

K8S = REPO / "deploy" / "kubernetes"
K8S_VERSION = "1.32.0"  # the kubectl/kustomize on this machine is 1.32
BGPD_ENV = {
    "NODENAME", "DATASTORE_TYPE", "ETCD_ENDPOINTS", "ETCD_CA_CERT_FILE",
    "ETCD_CERT_FILE", "ETCD_KEY_FILE", "PODBGP_CONFIG_FILE", "PODBGP_HTTP_LISTEN",
    "PODBGP_DATAPLANE",
}
CAPS = {"NET_ADMIN", "NET_BIND_SERVICE"}

# What calico-etcd.yaml provides and the sidecar patch relies on (trimmed).
CALICO_NODE = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: calico-node, namespace: kube-system, labels: {k8s-app: calico-node}}
spec:
  selector: {matchLabels: {k8s-app: calico-node}}
  template:
    metadata: {labels: {k8s-app: calico-node}}
    spec:
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      priorityClassName: system-node-critical
      tolerations: [{operator: Exists}]
      containers:
        - name: calico-node
          image: docker.io/calico/node:v3.28.0
          env:
            - {name: DATASTORE_TYPE, value: etcdv3}
            - name: ETCD_ENDPOINTS
              valueFrom: {configMapKeyRef: {name: calico-config, key: etcd_endpoints}}
            - {name: CALICO_NETWORKING_BACKEND, value: bird}
          livenessProbe:
            exec: {command: [/bin/calico-node, -felix-live, -bird-live]}
          readinessProbe:
            exec: {command: [/bin/calico-node, -felix-ready, -bird-ready]}
          securityContext: {privileged: true}
          volumeMounts: [{name: etcd-certs, mountPath: /calico-secrets}]
      volumes:
        - name: etcd-certs
          secret: {secretName: calico-etcd-secrets, defaultMode: 0400}
"""


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def kustomize(directory: Path) -> list[dict]:
    # kubectl (kustomize) ships with this machine image but has no Debian/PyPI package
    # the project could install; without it these two build checks cannot run.
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: kustomize build not checked")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def container(ds: dict, name: str = "podbgp") -> dict:
    return next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c["env"]}


def listen_port(c: dict) -> int:
    listen = env_of(c)["PODBGP_HTTP_LISTEN"]["value"]
    return int(listen.rpartition(":")[2])


def assert_podbgp_contract(ds: dict) -> None:
    """What bgpd needs from any pod it runs in, standalone or as a sidecar."""
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    names = [e["name"] for e in c["env"]]
    env = env_of(c)
    assert set(names) - {"HOST_IP"} <= BGPD_ENV, f"not a bgpd variable: {set(names) - BGPD_ENV}"
    assert env["NODENAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # $(HOST_IP) expands only if HOST_IP is defined earlier in the list.
    assert env["PODBGP_HTTP_LISTEN"]["value"] == "$(HOST_IP):9179"
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert names.index("HOST_IP") < names.index("PODBGP_HTTP_LISTEN")
    assert "configMapKeyRef" in env["ETCD_ENDPOINTS"]["valueFrom"]
    # Probes, annotations and the named port all point at where bgpd listens.
    port = listen_port(c)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http-metrics": port, "bgp": 179}
    notes = ds["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(port)
    assert notes["prometheus.io/path"] == "/metrics"
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": sorted(CAPS)}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    # TLS files live in a mounted Secret volume, under the key names it has.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert all(m["name"] in volumes for m in c["volumeMounts"]), "mount of an undefined volume"
    for var in ("ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"):
        directory, _, _ = env[var]["value"].rpartition("/")
        assert directory in mounts, f"{var} is not in a mounted volume"
        assert "secret" in volumes[mounts[directory]], f"{var} is not from a Secret"
    # A read-only root needs writable /tmp and /run/podbgp.
    if sc.get("readOnlyRootFilesystem"):
        assert {"/tmp", "/run/podbgp"} <= set(mounts)


def test_every_builtin_manifest_is_schema_valid() -> None:
    files = sorted(K8S.glob("*.yaml"))
    assert {f.name for f in files} >= {
        "podbgp.yaml", "configmap.yaml", "secret-example.yaml", "service.yaml",
        "servicemonitor.yaml", "podbgp-sidecar.yaml", "kustomization.yaml",
    }
    checked = 0
    for f in files:
        # The sidecar is a patch (partial object), the kustomization is not a
        # cluster object; both are validated below after kustomize builds them.
        if f.name in ("podbgp-sidecar.yaml", "kustomization.yaml"):
            continue
        for doc in load(f):
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue
            validate(doc)
            checked += 1
    assert checked >= 5  # ServiceAccount, DaemonSet, ConfigMap, Secret, Service


def test_schema_validation_catches_a_typo() -> None:
    """The check above is strict: a misspelt field must fail it."""
    import kubernetes_validate

    ds = by_kind(load(K8S / "podbgp.yaml"), "DaemonSet")[0]
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(ds)


def test_standalone_daemonset_contract() -> None:
    docs = load(K8S / "podbgp.yaml")
    (ds,) = by_kind(docs, "DaemonSet")
    (sa,) = by_kind(docs, "ServiceAccount")
    assert_podbgp_contract(ds)
    pod = ds["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["terminationGracePeriodSeconds"] >= 10
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1},
    }
    assert ds["metadata"]["namespace"] == "kube-system"
    # The ConfigMap and Secret it refers to have the keys it asks for.
    env = env_of(container(ds))
    # Standalone, nobody else keeps tunnels and NAT: the data plane stays on.
    assert env.get("PODBGP_DATAPLANE", {}).get("value", "on") == "on"
    cm = load(K8S / "configmap.yaml")[0]
    for var in ("ETCD_ENDPOINTS", "DATASTORE_TYPE"):
        ref = env[var]["valueFrom"]["configMapKeyRef"]
        assert ref["name"] == cm["metadata"]["name"] and ref["key"] in cm["data"]
    secret = load(K8S / "secret-example.yaml")[0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["etcd-tls"]["secret"]["secretName"] == secret["metadata"]["name"]
    for var in ("ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"):
        assert env[var]["value"].rpartition("/")[2] in secret["stringData"]


def test_service_and_servicemonitor_select_the_pods() -> None:
    (ds,) = by_kind(load(K8S / "podbgp.yaml"), "DaemonSet")
    (svc,) = load(K8S / "service.yaml")
    (sm,) = load(K8S / "servicemonitor.yaml")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"]: p for p in svc["spec"]["ports"]}
    containers = ds["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: (p["containerPort"], c) for c in containers
                       for p in c["ports"]}
    for p in port_names.values():
        port, owner = container_ports[p["targetPort"]]
        listen = next(e["value"] for e in owner["env"] if e["name"].endswith("HTTP_LISTEN"))
        assert port == p["port"] == int(listen.rpartition(":")[2])
    # ServiceMonitor: a CRD, so its shape is checked here.
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
    assert set(sm["spec"]) <= {"jobLabel", "namespaceSelector", "selector", "endpoints",
                               "targetLabels", "podTargetLabels", "sampleLimit"}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    endpoint_keys = {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings",
                     "metricRelabelings", "honorLabels", "tlsConfig"}
    assert sm["spec"]["endpoints"]
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= endpoint_keys, set(ep) - endpoint_keys
        assert ep["port"] in port_names and ep["path"] == "/metrics"
        for r in ep.get("relabelings", []):
            assert r["action"] in {"replace", "keep", "drop", "labelmap", "labeldrop"}


def test_kustomization_builds_valid_objects() -> None:
    docs = kustomize(K8S)
    assert {d["kind"] for d in docs} == {"ServiceAccount", "DaemonSet", "ConfigMap", "Service"}
    for doc in docs:
        validate(doc)
    assert_podbgp_contract(by_kind(docs, "DaemonSet")[0])


def test_sidecar_patch_merges_into_calico_node(tmp_path: Path) -> None:
    (tmp_path / "calico-node.yaml").write_text(CALICO_NODE)
    shutil.copy(K8S / "podbgp-sidecar.yaml", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [calico-node.yaml]\npatches:\n  - path: podbgp-sidecar.yaml\n"
    )
    (ds,) = kustomize(tmp_path)
    validate(ds)
    assert_podbgp_contract(ds)
    calico = container(ds, "calico-node")
    # Merged, not replaced: calico-node keeps its own settings.
    assert calico["image"].startswith("docker.io/calico/node")
    assert env_of(calico)["CALICO_NETWORKING_BACKEND"]["value"] == "none"
    assert env_of(calico)["ETCD_ENDPOINTS"]["valueFrom"]["configMapKeyRef"]["name"] == (
        "calico-config"
    )
    assert not any("bird" in arg for arg in calico["readinessProbe"]["exec"]["command"])
    assert not any("bird" in arg for arg in calico["livenessProbe"]["exec"]["command"])
    # podbgp reads the same etcd settings calico-node does.
    podbgp_env = env_of(container(ds))
    # Felix keeps tunnels and NAT next to calico-node: podbgp's data plane is off
    # (bgpd.options --dataplane / PODBGP_DATAPLANE).
    assert podbgp_env["PODBGP_DATAPLANE"]["value"] == "off"
    from bgpd.options import _on_off

    assert _on_off("PODBGP_DATAPLANE", podbgp_env["PODBGP_DATAPLANE"]["value"]) is False
    assert podbgp_env["ETCD_ENDPOINTS"]["valueFrom"] == env_of(calico)["ETCD_ENDPOINTS"][
        "valueFrom"
    ]


POLICY_ENV = {"NODENAME", "HOST_IP", "PODBGP_POLICY_HTTP_LISTEN", "DATASTORE_TYPE",
              "ETCD_ENDPOINTS", "ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE",
              "FELIX_INTERFACEPREFIX", "PODBGP_POLICY_TABLE", "PODBGP_POLICY_RESYNC_INTERVAL"}


def test_policy_agent_runs_beside_bgpd_standalone_only() -> None:
    (ds,) = by_kind(load(K8S / "podbgp.yaml"), "DaemonSet")
    c = container(ds, "podbgp-policy")
    bgpd = container(ds)
    env = env_of(c)
    names = [e["name"] for e in c["env"]]
    assert set(names) <= POLICY_ENV, set(names) - POLICY_ENV
    # the same datastore settings as bgpd, from the same places
    for var in ("DATASTORE_TYPE", "ETCD_ENDPOINTS", "ETCD_CA_CERT_FILE", "ETCD_CERT_FILE",
                "ETCD_KEY_FILE", "NODENAME"):
        assert env[var] == env_of(bgpd)[var]
    assert names.index("HOST_IP") < names.index("PODBGP_POLICY_HTTP_LISTEN")
    port = int(env["PODBGP_POLICY_HTTP_LISTEN"]["value"].rpartition(":")[2])
    assert port != listen_port(bgpd)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http-policy": port}
    assert c["command"][-1] == "podbgp-policy"
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert sc["privileged"] is False and sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert env["ETCD_CA_CERT_FILE"]["value"].rpartition("/")[0] in mounts
    # Beside calico-node Felix enforces policy: the sidecar has no agent.
    sidecar = (K8S / "podbgp-sidecar.yaml").read_text()
    assert "podbgp-policy" not in sidecar


def test_cni_agent_runs_beside_bgpd_where_the_plugins_look_for_it() -> None:
    """The podbgp-cni agent container serves the socket the node's plugins use by
    default, at the host's paths: every path a plugin call names (CNI_NETNS under
    /var/run/netns, the config's TLS files under /etc/cni/net.d, the IPAM plugin in
    /opt/cni/bin, the IPAM lock) is the host's own, so a call gives the same result
    through the agent as in the plugin's own process."""
    import os.path

    from cni.agent import DEFAULT_AGENT_SOCKET
    from ipam.cni import DEFAULT_LOCK_FILE

    (ds,) = by_kind(load(K8S / "podbgp.yaml"), "DaemonSet")
    c = container(ds, "podbgp-cni-agent")
    pod = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    cmd = c["command"]
    assert cmd[cmd.index("podbgp-cni") + 1] == "agent"
    assert cmd[cmd.index("--socket") + 1] == DEFAULT_AGENT_SOCKET
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}

    def host_path(path: str) -> str:
        return volumes[mounts[path]["name"]]["hostPath"]["path"]

    for path in (os.path.dirname(DEFAULT_AGENT_SOCKET), "/var/run/netns",
                 os.path.dirname(DEFAULT_LOCK_FILE), "/etc/cni/net.d", "/opt/cni/bin"):
        assert host_path(path) == path, path
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    # install-cni writes the plugins and config to the same host directories.
    init = next(i for i in pod["initContainers"] if i["name"] == "install-cni")
    init_mounts = {m["name"] for m in init["volumeMounts"]}
    assert {mounts["/etc/cni/net.d"]["name"], mounts["/opt/cni/bin"]["name"]} <= init_mounts
    env = env_of(c)
    names = [e["name"] for e in c["env"]]
    assert names.index("HOST_IP") < names.index("PODBGP_CNI_HTTP_LISTEN")
    port = int(env["PODBGP_CNI_HTTP_LISTEN"]["value"].rpartition(":")[2])
    assert port not in (listen_port(container(ds)), 9180)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http-cni": port}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and "/tmp" in mounts
    # Beside calico-node, Calico's CNI plugin is the node's: the sidecar has no agent.
    assert "podbgp-cni-agent" not in (K8S / "podbgp-sidecar.yaml").read_text()
