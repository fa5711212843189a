"""A fake datastore: the test publishes Snapshots, the daemon reads them.

Same surface as config's datastores towards the daemon (``start``, ``close``,
``snapshots()``, ``connected``, ``revision``, ``stats``), with the real
latest-wins ``SnapshotChannel`` behind it.
"""

from __future__ import annotations

from config.datastore import DatastoreStats, SnapshotChannel


class FakeDatastore:
    def __init__(self, connected: bool = True) -> None:
        self.connected = connected
        self.revision = 0
        self.stats = DatastoreStats()
        self._channel = SnapshotChannel()
        self.started = False
        self.closed = False

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True
        self._channel.close()

    def snapshots(self):
        return self._channel.subscribe()

    def publish(self, snapshot) -> None:
        self.revision = snapshot.revision
        self._channel.publish(snapshot)
