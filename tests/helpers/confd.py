"""Calico's confd test suite as data: cases, their inputs, the BGP sessions BIRD gets.

The cases are those of projectcalico/calico ``confd/tests/*_test.go`` (commit
87c15906): each names a ``mock_data/calicoctl/<dir>/input.yaml`` the test applies
(after the harness's block affinities), the node confd renders for
(``kube-master`` unless the test says ``withNodeName``), and the golden
``compiled_templates/<dir>/bird{,6}.cfg``. Daemon-mode steps that change a
resource or a Kubernetes secret in Go code are written here as data (``patch``,
``secrets``), with the line of the Go test they come from.

`bird_sessions` reads the ``protocol bgp`` blocks of a golden BIRD config into
plain dicts (the BIRD statements Calico's ``bird.cfg.template`` emits per peer);
`plan_sessions` turns podbgp's plan into the same dicts, so a test compares the
two directly.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "calico-confd"
MOCK = FIXTURES / "mock_data" / "calicoctl"
GOLDEN = FIXTURES / "compiled_templates"


@dataclass(frozen=True)
class Case:
    golden: str  # compiled_templates/<golden>/
    inputs: tuple[str, ...] = ()  # mock_data/calicoctl/<input> files, applied in order
    node: str = "kube-master"
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    patch: Callable[[list[dict]], None] | None = None
    source: str = ""  # the Go test that defines it

    @property
    def name(self) -> str:
        return self.golden


def _oneshot(golden: str, source: str) -> Case:
    return Case(golden, (f"{golden}/input.yaml",), source=source)


def _set_peer(**spec: Any) -> Callable[[list[dict]], None]:
    def patch(docs: list[dict]) -> None:
        for d in docs:
            if d.get("kind") == "BGPPeer" and d["metadata"]["name"] == "bgppeer-1":
                d["spec"].update(spec)
    return patch


_MESH = ["bgp-export", "ipip-always", "ipip-cross-subnet", "ipip-off", "vxlan-always", "hash",
         "communities", "restart-time", "route-reflector-mesh-enabled", "static-routes",
         "static-routes-exclude-node", "static-routes-no-ipv4-address"]
_EXPLICIT = ["global", "global-external", "global-ipv6", "specific_node", "selectors",
             "route_reflector", "route_reflector_v6_by_ip", "keepnexthop", "keepnexthop-global",
             "local-as", "local-as-global", "local-as-ipv6", "local-as-global-ipv6"]
_FILTER = ["single_filter/global_peer", "single_filter/explicit_peer", "multi_filter/global_peer",
           "multi_filter/explicit_peer", "node_mesh", "match_operators", "match_source",
           "match_interface", "filter_names", "import_only/explicit_peer",
           "import_only/global_peer", "v6_only/global_peer", "export_only/explicit_peer",
           "export_only/global_peer", "v4_only/explicit_peer", "v4_only/global_peer",
           "v6_only/explicit_peer", "communities_and_operations", "peer_type",
           "as_path_and_priority", "large_community", "kubevirt_live_migration"]
_EXTRA = ["ignored_interfaces", "reachable_by/global_peers", "reachable_by/route_reflectors",
          "felix_cluster_routing", "cluster_routes/default", "cluster_routes/enabled",
          "cluster_routes/ipip-only", "cluster_routes/noencap-only", "next_hop_mode/global_peers",
          "next_hop_mode/route_reflectors", "reverse_peering/manual", "reverse_peering/auto"]
_TTL = ["explicit_node", "peer_selector", "global"]

_PW = "password/input.yaml"
_MESH_PW = "mesh_password/input.yaml"
_SRC = "sourceaddr_gracefulrestart/input.yaml"

CASES: tuple[Case, ...] = (
    *(_oneshot(f"mesh/{n}", "mesh_test.go TestMeshTemplates") for n in _MESH),
    *(_oneshot(f"explicit_peering/{n}", "explicit_peering_test.go") for n in _EXPLICIT),
    *(_oneshot(f"bgpfilter/{n}", "bgpfilter_test.go TestBGPFilterTemplates") for n in _FILTER),
    *(_oneshot(f"ttl_security/{n}", "ttl_security_test.go") for n in _TTL),
    *(_oneshot(n, "extra_oneshot_test.go") for n in _EXTRA),
    # daemon_test.go TestDaemonModeRendering: a base input, then a step's input on top.
    Case("mesh/communities/step2", ("mesh/communities/input.yaml",
                                    "mesh/communities/step2/input.yaml"),
         source="daemon_test.go:439"),
    Case("explicit_peering/selectors/step2", ("explicit_peering/selectors/input.yaml",
                                              "explicit_peering/selectors/step2/input.yaml"),
         source="daemon_test.go:444"),
    # daemon_test.go TestSourceAddrGracefulRestart (node1, no block affinities).
    Case("sourceaddr_gracefulrestart/step1", (_SRC,), "node1", source="daemon_test.go:45"),
    Case("sourceaddr_gracefulrestart/step2", (_SRC,), "node1",
         patch=_set_peer(sourceAddress="None"), source="daemon_test.go:53"),
    Case("sourceaddr_gracefulrestart/step3", (_SRC,), "node1",
         patch=_set_peer(sourceAddress="None", maxRestartTime="10s"),
         source="daemon_test.go:61"),
    # daemon_test.go TestBGPPeerPassword: secrets in kube-system change between steps.
    Case("password/step1", (_PW,), "node1", source="daemon_test.go:139"),
    Case("password/step2", (_PW,), "node1", {"my-secrets-1": {"b": "password-b"}},
         source="daemon_test.go:151"),
    Case("password/step3", (_PW,), "node1",
         {"my-secrets-1": {"b": "password-b", "a": "password-a"},
          "my-secrets-2": {"c": "password-c"}}, source="daemon_test.go:170"),
    Case("password/step4", (_PW,), "node1",
         {"my-secrets-1": {"b": "password-b", "a": "password-a"}}, source="daemon_test.go:175"),
    Case("password/step5", (_PW,), "node1",
         {"my-secrets-1": {"b": "new-password-b", "a": "new-password-a"}},
         source="daemon_test.go:184"),
    Case("password/step6", (_PW,), "node1", {"my-secrets-1": {"b": "new-password-b"}},
         source="daemon_test.go:193"),
    # daemon_test.go TestNodeMeshBGPPassword.
    Case("mesh/password/step1", (_MESH_PW,), source="daemon_test.go:81"),
    Case("mesh/password/step2", (_MESH_PW,), secrets={"my-secrets-1": {"a": "password-a"}},
         source="daemon_test.go:90"),
    Case("mesh/password/step3", (_MESH_PW,), secrets={"my-secrets-1": {"a": "new-password-a"}},
         source="daemon_test.go:99"),
)


def case_documents(case: Case) -> list[dict]:
    """The resources of a case, as decoded YAML documents (Kubernetes kinds dropped)."""
    from config.parse import load_yaml_documents

    docs: list[dict] = []
    for name in case.inputs:
        docs.extend(load_yaml_documents((MOCK / name).read_text()))
    docs = [copy.deepcopy(d) for d in docs if d.get("kind") not in ("Service", "EndpointSlice")]
    # A later document of the same kind and name replaces the earlier one (a step's update).
    seen: dict[tuple[str, str], int] = {}
    out: list[dict] = []
    for d in docs:
        ident = (d["kind"], d["metadata"]["name"])
        if ident in seen:
            out[seen[ident]] = d
        else:
            seen[ident] = len(out)
            out.append(d)
    if case.patch:
        case.patch(out)
    return out


# ----------------------------------------------------------------- BIRD side

_NEIGHBOR = re.compile(r"neighbor (\S+?)(?: port (\d+))? as (\d+);")


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """(header, top-level statements) of every top-level ``{ ... }`` block."""
    out: list[tuple[str, list[str]]] = []
    depth = 0
    header = ""
    body: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if depth == 0:
            if line.endswith("{"):
                header, body, depth = line[:-1].strip(), [], 1
            continue
        if depth == 1 and not line.startswith("}"):
            body.append(line)
        depth += line.count("{") - line.count("}")
        if depth == 0:
            out.append((header, body))
    return out


def bird_sessions(*texts: str) -> dict[str, dict]:
    """Every ``protocol bgp`` of BIRD configs, by protocol name, as a comparable dict."""
    sessions: dict[str, dict] = {}
    for text in texts:
        templates: dict[str, list[str]] = {}
        for header, body in _blocks(text):
            parts = header.split()
            if parts[:2] == ["template", "bgp"]:
                templates[parts[2]] = body
            elif parts[:2] == ["protocol", "bgp"]:
                base = templates.get(parts[4], []) if len(parts) >= 5 else []
                sessions[parts[2]] = _session(base + body)
    return sessions


def _session(stmts: list[str]) -> dict:
    s: dict[str, Any] = {"passive": False, "rr_client": False, "rr_cluster_id": None,
                         "password": None, "next_hop": None, "allow_local_as": 0,
                         "restart_time": 120, "keepalive": None, "source": None, "ttl": 0,
                         "add_paths": False, "port": 179}
    for st in stmts:
        if st.startswith("local as "):
            s["local_as"] = int(st[len("local as "):].rstrip(";"))
        elif (m := _NEIGHBOR.match(st)):
            s["ip"], s["port"], s["as"] = m.group(1), int(m.group(2) or 179), int(m.group(3))
        elif st.startswith("source address "):
            s["source"] = st.split()[2].rstrip(";")
        elif st.startswith("multihop ") and st != "multihop;":
            s["ttl"] = int(st.split()[1].rstrip(";"))
        elif st == "passive on;":
            s["passive"] = True
        elif st.startswith("graceful restart time "):
            s["restart_time"] = int(st.split()[3].rstrip(";"))
        elif st.startswith("keepalive time "):
            s["keepalive"] = int(st.split()[2].rstrip(";"))
        elif st == "rr client;":
            s["rr_client"] = True
        elif st.startswith("rr cluster id "):
            s["rr_cluster_id"] = st.split()[3].rstrip(";")
        elif st.startswith("password "):
            s["password"] = st[len("password "):].rstrip(";").strip('"')
        elif st in ("next hop keep;", "next hop self;"):
            s["next_hop"] = st.split()[2].rstrip(";")
        elif st.startswith("allow local as "):
            s["allow_local_as"] = int(st.split()[3].rstrip(";"))
        elif st == "add paths on;":
            s["add_paths"] = True
    return s


def golden_sessions(case: Case) -> dict[str, dict]:
    texts = [(GOLDEN / case.golden / f).read_text() for f in ("bird.cfg", "bird6.cfg")
             if (GOLDEN / case.golden / f).exists()]
    return bird_sessions(*texts)


# ----------------------------------------------------------------- podbgp side


def plan_sessions(plan: Any) -> dict[str, dict]:
    """podbgp's PeerPlan (every planned session) as `bird_sessions` dicts, by name."""
    out: dict[str, dict] = {}
    for p in plan.planned:
        out[p.name] = {
            "ip": p.address, "port": p.port, "as": p.peer_as, "local_as": p.local_as,
            "source": p.local_address if p.bind_source else None,
            "ttl": p.ttl_security, "passive": p.passive,
            "restart_time": p.graceful_restart_time, "keepalive": p.keepalive_time,
            "rr_client": p.rr_client, "rr_cluster_id": p.rr_cluster_id if p.rr_client else None,
            "password": p.password,
            "next_hop": {"Keep": "keep", "Self": "self"}.get(str(p.next_hop_mode)),
            "allow_local_as": p.num_allowed_local_as, "add_paths": p.add_paths,
        }
    return out


def secret_reader(case: Case) -> Callable[[str, str], str | None]:
    def read(name: str, key: str) -> str | None:
        return case.secrets.get(name, {}).get(key)
    return read
