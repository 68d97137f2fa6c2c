"""moto's server, with its RDS read replicas made to keep their own settings as AWS's do.

Run as a script (``python devstack/motomain.py -H 127.0.0.1 -p PORT``), it takes moto.server's
arguments. moto 5.2.5 builds a read replica as a shallow copy of its source, so the replica and
its source share one ``EnabledCloudwatchLogsExports`` list: turning the export off on a replica
turns it off on the primary too, and ``EnableCloudwatchLogsExports`` given to
``CreateDBInstanceReadReplica`` is ignored. It also cannot delete a cross-region replica (the
source lists it by ARN, and moto removes it by identifier). On AWS each instance has its own
export configuration, and the tests need a replica whose export is off beside a primary whose
export is on. Only these two behaviours of moto's fake are changed; everything else is moto's.
"""

from __future__ import annotations

import sys
from typing import Any

from moto.rds import models


def _patch() -> None:
    create_replica = models.RDSBackend.create_db_instance_read_replica
    remove_replica = models.DBInstance.remove_replica

    def create_db_instance_read_replica(self: Any, db_kwargs: dict[str, Any]) -> Any:
        exports = db_kwargs.get("enable_cloudwatch_logs_exports")
        replica = create_replica(self, db_kwargs)
        replica.enabled_cloudwatch_logs_exports = list(
            replica.enabled_cloudwatch_logs_exports if exports is None else exports
        )
        return replica

    def remove(self: Any, replica: Any) -> None:
        if replica.db_instance_arn in self.replicas:
            self.replicas.remove(replica.db_instance_arn)
        else:
            remove_replica(self, replica)

    models.RDSBackend.create_db_instance_read_replica = create_db_instance_read_replica
    models.DBInstance.remove_replica = remove


if __name__ == "__main__":
    _patch()
    from moto.server import main

    sys.exit(main(sys.argv[1:]))
