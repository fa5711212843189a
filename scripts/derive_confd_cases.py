"""Derive tests/fixtures/confd_cases.json from Calico's confd test suite (not run by tests).

Reads projectcalico/calico at a commit from a git directory (the ``fetch`` mirror,
e.g. /work/.mirror/projectcalico+calico/repo) and writes, per confd test case, the
facts podbgp's peer planning is checked against, in podbgp's own schema:

- ``resources``: the inputs that decide BGP sessions, reduced — Nodes to their name,
  labels and ``spec.bgp``; BGPConfiguration, BGPPeer and BGPFilter to name and spec;
  a daemon-mode step's change (a Go test edits a resource) already applied. IPPools,
  IPAM data, Kubernetes Services/EndpointSlices and ``delete.yaml`` files are left
  out: they change routes, not sessions.
- ``sessions``: per BIRD ``protocol bgp`` confd renders (bird.cfg and bird6.cfg), the
  session's facts: neighbour address, port and AS, local AS, router id, source
  address, passive, TTL security, graceful-restart/keepalive time, route-reflector
  client and cluster id, password, next hop, allow local as, add paths, and the
  BGPFilters applied on import and export (names, in order).

Nothing of Calico is copied: no BIRD config, no mock-data file. The case list (which
inputs a Go test applies, the node it renders for, the secrets and edits of
daemon-mode steps) is written below from the Go tests, with their file and line.

    .venv/bin/python scripts/derive_confd_cases.py /work/.mirror/projectcalico+calico/repo
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from config.parse import load_yaml_documents  # read as podbgp reads YAML

COMMIT = "87c15906f20c4ca1fda55af92295e7678b0cc0b2"
MOCK = "confd/tests/mock_data/calicoctl"
GOLDEN = "confd/tests/compiled_templates"
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "confd_cases.json"

# --------------------------------------------------------------------- the cases

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


def _case(golden: str, test: str, inputs: tuple[str, ...] = (), node: str = "kube-master",
          secrets: dict | None = None, changes: tuple[dict, ...] = (),
          env: dict | None = None, count: int | None = None) -> dict:
    return {"name": golden, "test": test, "inputs": inputs or (f"{golden}/input.yaml",),
            "node": node, "env": env or {}, "secrets": secrets or {},
            "changes": list(changes), "ipv4_session_count": count}


# calico-node's environment a case sets (mesh_test.go envVars).
_ENV = {"mesh/hash": {"CALICO_ROUTER_ID": "hash"},
        "mesh/static-routes-no-ipv4-address": {"CALICO_ROUTER_ID": "10.10.10.10"}}


# A daemon-mode step edits a resource's spec, or deletes it, in Go (daemon_test.go).
def _peer1(**spec: Any) -> dict:
    return {"kind": "BGPPeer", "name": "bgppeer-1", "spec": spec}


def _default(**spec: Any) -> dict:
    return {"kind": "BGPConfiguration", "name": "default", "spec": spec}


def _pcr(value: str) -> dict:
    return _default(programClusterRoutes=value)


CASES: list[dict] = [
    *(_case(f"mesh/{n}", "confd/tests/mesh_test.go TestMeshTemplates", env=_ENV.get(f"mesh/{n}"))
      for n in _MESH),
    *(_case(f"explicit_peering/{n}", "confd/tests/explicit_peering_test.go") for n in _EXPLICIT),
    *(_case(f"bgpfilter/{n}", "confd/tests/bgpfilter_test.go TestBGPFilterTemplates")
      for n in _FILTER),
    *(_case(f"ttl_security/{n}", "confd/tests/ttl_security_test.go") for n in _TTL),
    *(_case(n, "confd/tests/extra_oneshot_test.go") for n in _EXTRA),
    # TestDaemonModeRendering: a base input, then a step's input on top.
    _case("mesh/communities/step2", "confd/tests/daemon_test.go:439",
          ("mesh/communities/input.yaml", "mesh/communities/step2/input.yaml")),
    _case("explicit_peering/selectors/step2", "confd/tests/daemon_test.go:444",
          ("explicit_peering/selectors/input.yaml", "explicit_peering/selectors/step2/input.yaml")),
    # TestSourceAddrGracefulRestart (node1).
    _case("sourceaddr_gracefulrestart/step1", "confd/tests/daemon_test.go:45", (_SRC,), "node1"),
    _case("sourceaddr_gracefulrestart/step2", "confd/tests/daemon_test.go:53", (_SRC,), "node1",
          changes=(_peer1(sourceAddress="None"),)),
    _case("sourceaddr_gracefulrestart/step3", "confd/tests/daemon_test.go:61", (_SRC,), "node1",
          changes=(_peer1(sourceAddress="None", maxRestartTime="10s"),)),
    # TestNormalRoutePriorityChange (kube-master, no block affinities).
    _case("bgpfilter/node_mesh/priority1", "confd/tests/daemon_test.go:388",
          ("bgpfilter/node_mesh/input.yaml",)),
    _case("bgpfilter/node_mesh/priority2", "confd/tests/daemon_test.go:396",
          ("bgpfilter/node_mesh/input.yaml",), changes=(_default(ipv4NormalRoutePriority=5000),)),
    _case("bgpfilter/node_mesh/priority3", "confd/tests/daemon_test.go:404",
          ("bgpfilter/node_mesh/input.yaml",),
          changes=(_default(ipv4NormalRoutePriority=5000, ipv6NormalRoutePriority=80),)),
    # TestBGPFilterDeletion: the peers' filter is deleted.
    _case("bgpfilter/filter_deletion/step1", "confd/tests/daemon_test.go:416",
          ("bgpfilter/filter_deletion/input.yaml",)),
    _case("bgpfilter/filter_deletion/step2", "confd/tests/daemon_test.go:422",
          ("bgpfilter/filter_deletion/input.yaml",),
          changes=({"kind": "BGPFilter", "name": "test-filter", "delete": True},)),
    # TestProgramClusterRoutes: programClusterRoutes moved around its enum.
    *(_case(f"mesh/restart-time/pcr-{g}", f"confd/tests/daemon_test.go:{line}",
            ("mesh/restart-time/input.yaml",), changes=(_pcr(v),))
      for g, v, line in (("disabled", "Disabled", 544), ("enabled", "Enabled", 545),
                         ("ipip-only", "EnabledIPIPOnly", 546))),
    # Tests that assert only how many "protocol bgp" bird.cfg has (expectPeeringCount),
    # no golden: a global and a node-specific BGPPeer selecting the same node are one
    # session; a deleted node's session goes.
    _case("idle_peers", "confd/tests/daemon_test.go:334 TestIdlePeers", node="node1", count=1),
    _case("node_deletion/step1", "confd/tests/daemon_test.go:359 TestNodeDeletion",
          ("node_deletion/input.yaml",), "node1", count=3),
    _case("node_deletion/step2", "confd/tests/daemon_test.go:373 TestNodeDeletion",
          ("node_deletion/input.yaml",), "node1", count=2,
          changes=({"kind": "Node", "name": "node3", "delete": True},)),
    # TestBGPPeerPassword: secrets in kube-system change between steps.
    _case("password/step1", "confd/tests/daemon_test.go:139", (_PW,), "node1"),
    _case("password/step2", "confd/tests/daemon_test.go:151", (_PW,), "node1",
          {"my-secrets-1": {"b": "password-b"}}),
    _case("password/step3", "confd/tests/daemon_test.go:170", (_PW,), "node1",
          {"my-secrets-1": {"b": "password-b", "a": "password-a"},
           "my-secrets-2": {"c": "password-c"}}),
    _case("password/step4", "confd/tests/daemon_test.go:175", (_PW,), "node1",
          {"my-secrets-1": {"b": "password-b", "a": "password-a"}}),
    _case("password/step5", "confd/tests/daemon_test.go:184", (_PW,), "node1",
          {"my-secrets-1": {"b": "new-password-b", "a": "new-password-a"}}),
    _case("password/step6", "confd/tests/daemon_test.go:193", (_PW,), "node1",
          {"my-secrets-1": {"b": "new-password-b"}}),
    # TestNodeMeshBGPPassword.
    _case("mesh/password/step1", "confd/tests/daemon_test.go:81", (_MESH_PW,)),
    _case("mesh/password/step2", "confd/tests/daemon_test.go:90", (_MESH_PW,),
          secrets={"my-secrets-1": {"a": "password-a"}}),
    _case("mesh/password/step3", "confd/tests/daemon_test.go:99", (_MESH_PW,),
          secrets={"my-secrets-1": {"a": "new-password-a"}}),
]

# --------------------------------------------------------------------- inputs

KEPT = ("Node", "BGPConfiguration", "BGPPeer", "BGPFilter")


def _reduce(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind not in KEPT:
        return None
    meta = doc.get("metadata") or {}
    out: dict[str, Any] = {"kind": kind, "name": meta["name"]}
    if kind == "Node":
        if meta.get("labels"):
            out["labels"] = meta["labels"]
        bgp = (doc.get("spec") or {}).get("bgp")
        out["spec"] = {"bgp": bgp} if bgp else {}
    else:
        out["spec"] = doc.get("spec") or {}
    return out


def resources(show, case: dict) -> list[dict]:
    out: list[dict] = []
    where: dict[tuple[str, str], int] = {}
    for name in case["inputs"]:
        for doc in load_yaml_documents(show(f"{MOCK}/{name}")):
            if (r := _reduce(doc)) is None:
                continue
            key = (r["kind"], r["name"])
            if key in where:  # a step's document replaces the base one
                out[where[key]] = r
            else:
                where[key] = len(out)
                out.append(r)
    for ch in case["changes"]:
        (r,) = [r for r in out if (r["kind"], r["name"]) == (ch["kind"], ch["name"])]
        if ch.get("delete"):
            out.remove(r)
        else:
            r["spec"] = {**r["spec"], **copy.deepcopy(ch["spec"])}
    return out


# --------------------------------------------------------------------- BIRD sessions

_NEIGHBOR = re.compile(r"neighbor (\S+?)(?: port (\d+))? as (\d+);")
_FILTER_CALL = re.compile(r"'bgp_(.+)_(import|export)FilterV[46]'\(")


def _blocks(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(header, depth-1 statements, every nested line) of each top-level block."""
    out = []
    depth, header, body, inner = 0, "", [], []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if depth == 0:
            if line.endswith("{"):
                header, body, inner, depth = line[:-1].strip(), [], [], 1
            elif line.startswith("router id "):
                out.append(("router id", [line], []))
            continue
        if depth == 1 and not line.startswith("}"):
            body.append(line)
        if depth >= 1:
            inner.append(line)
        depth += line.count("{") - line.count("}")
        if depth == 0:
            out.append((header, body, inner))
    return out


# A session's facts where BIRD's config does not say otherwise; the output leaves
# these out of each session and states them once.
DEFAULTS: dict[str, Any] = {"port": 179, "source": None, "passive": False, "ttl": 0,
                            "restart_time": 120, "keepalive": None, "rr_client": False,
                            "rr_cluster_id": None, "password": None, "next_hop": None,
                            "allow_local_as": 0, "add_paths": False,
                            "import_filters": [], "export_filters": []}


def _session(stmts: list[str], inner: list[str], router_id: str | None,
             filter_names: list[str]) -> dict:
    s: dict[str, Any] = {"ip": None, "as": None, "local_as": None, "router_id": router_id,
                         **copy.deepcopy(DEFAULTS)}
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
    for line in inner:
        if (m := _FILTER_CALL.search(line)):
            s[f"{m.group(2)}_filters"].append(_filter_name(m.group(1), filter_names))
    return {k: v for k, v in s.items() if k not in DEFAULTS or DEFAULTS[k] != v}


def _filter_name(called: str, names: list[str]) -> str:
    """The BGPFilter a BIRD function call names: confd cuts a name longer than 45
    characters to 28 + "_" + 16 hex digits of its SHA-256 (template/util.go
    TruncateAndHashName, bgp_processor.go truncateBGPFilterName)."""
    def cut(n: str) -> str:
        return n if len(n) <= 45 else f"{n[:28]}_{hashlib.sha256(n.encode()).hexdigest().upper()[:16]}"
    (name,) = [n for n in names if cut(n) == called]
    return name


def sessions(text: str, filter_names: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    templates: dict[str, list[str]] = {}
    router_id = None
    for header, body, inner in _blocks(text):
        parts = header.split()
        if header == "router id":
            router_id = body[0].split()[2].rstrip(";")
        elif parts[:2] == ["template", "bgp"]:
            templates[parts[2]] = body
        elif parts[:2] == ["protocol", "bgp"]:
            base = templates.get(parts[4], []) if len(parts) >= 5 else []
            out[parts[2]] = _session(base + body, inner, router_id, filter_names)
    return out


# --------------------------------------------------------------------- output


def _line(obj: Any) -> str:
    return json.dumps(obj, separators=(", ", ": "))


def render(cases: list[dict]) -> str:
    out = ["{",
           f'  "source": {_line({"repository": "projectcalico/calico", "commit": COMMIT, "derived_by": "scripts/derive_confd_cases.py", "license_of_source": "Apache-2.0"})},',
           f'  "session_defaults": {_line(DEFAULTS)},',
           '  "cases": [']
    for i, c in enumerate(cases):
        out.append("    {" + ", ".join(f'"{k}": {_line(c[k])}' for k in
                                        ("name", "test", "inputs", "expected", "node",
                                         "env", "secrets", "changes", "ipv4_session_count")) + ",")
        out.append('     "resources": [')
        out.append(",\n".join(f"       {_line(r)}" for r in c["resources"]))
        out.append('     ],')
        out.append('     "sessions": {')
        out.append(",\n".join(f"       {_line(n)}: {_line(s)}"
                              for n, s in sorted(c["sessions"].items())))
        out.append("     }}" + ("," if i < len(cases) - 1 else ""))
    out += ["  ]", "}", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("git_dir", help="a git directory holding projectcalico/calico")
    ap.add_argument("--commit", default=COMMIT)
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    args = ap.parse_args(argv)

    def show(path: str) -> str:
        return subprocess.run(["git", "--git-dir", args.git_dir, "show", f"{args.commit}:{path}"],
                              check=True, capture_output=True, text=True).stdout

    def exists(path: str) -> bool:
        return subprocess.run(["git", "--git-dir", args.git_dir, "cat-file", "-e",
                               f"{args.commit}:{path}"], capture_output=True).returncode == 0

    cases = []
    for c in CASES:
        res = resources(show, c)
        filters = [r["name"] for r in res if r["kind"] == "BGPFilter"]
        golden = [] if c["ipv4_session_count"] is not None else [
            f"{GOLDEN}/{c['name']}/{f}" for f in ("bird.cfg", "bird6.cfg")
            if exists(f"{GOLDEN}/{c['name']}/{f}")]
        sess: dict[str, dict] = {}
        for g in golden:
            sess.update(sessions(show(g), filters))
        cases.append({**c, "inputs": [f"{MOCK}/{i}" for i in c["inputs"]], "expected": golden,
                      "resources": res, "sessions": sess})
    args.output.write_text(render(cases))
    print(f"{len(cases)} cases, {sum(len(c['sessions']) for c in cases)} sessions -> "
          f"{args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
