"""rib.path.paths_for: the clone constructor one UPDATE's paths are built with."""

from __future__ import annotations

from dataclasses import astuple, fields, replace

from rib.path import Origin, Path, PeerKind, PeerRef, paths_for

REF = PeerRef("10.0.0.2", 65002, "10.0.0.2", PeerKind.EBGP)


def test_paths_for_equals_constructor_for_every_field() -> None:
    # Every field set to a non-default value, so a field the clone forgot shows up.
    template = Path("10.244.0.0/26", "10.0.0.2", REF, origin=Origin.INCOMPLETE,
                    as_path=(65002, 7), local_pref=150, med=9, communities=((1, 2),),
                    large_communities=((1, 2, 3),), originator_id="1.1.1.1",
                    cluster_list=("2.2.2.2",), stale=True, as_set_len=1, path_id=7)
    assert all(getattr(template, f.name) != f.default for f in fields(Path)
               if f.name not in ("prefix", "next_hop", "peer"))
    prefixes = ["10.244.1.0/26", "10.244.2.0/26"]
    got = paths_for(prefixes, template)
    for p, prefix in zip(got, prefixes, strict=True):
        want = replace(template, prefix=prefix)
        assert p == want and hash(p) == hash(want) and astuple(p) == astuple(want)
        assert p.as_path is template.as_path  # attribute objects shared, not copied
    assert paths_for([], template) == []
