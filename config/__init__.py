"""config: Calico-compatible resource model, parsing, key layout and datastores.

Modules (see docs/interfaces.md): `config.model` (the models, validated by
`config.lite`: pydantic's API, no pydantic),
`config.errors` (`ConfigError`), `config.parse` (the one parser),
`config.keys` (etcd key layout), `config.selector` (label selectors),
`config.snapshot` (`Snapshot`), `config.etcd_store` / `config.file_store`.
"""
