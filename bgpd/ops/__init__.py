"""Operations plumbing of the daemon: the HTTP endpoints (``http``), Prometheus
metrics (``metrics``), systemd's sd_notify (``sdnotify``) and structlog set-up
(``log``). No routing decisions live here."""
