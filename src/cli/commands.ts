import type { CommandRegistrar } from './main.js';
import { registerAudit } from './commands/audit.js';
import { registerCopy } from './commands/copy.js';
import { registerDoctor } from './commands/doctor.js';
import { registerDualRun } from './commands/dualrun.js';
import { registerExport } from './commands/export.js';
import { registerInit } from './commands/init.js';
import { registerPlan } from './commands/plan.js';
import { registerVerify } from './commands/verify.js';

/**
 * Every command the CLI offers, grouped by stage in `--help`. Each command
 * lives in `commands/<name>.ts`; its action lazy-imports the service and the
 * renderer so `--help` loads no gRPC or HTTP code.
 */
export function registerCommands(registrar: CommandRegistrar): void {
  registrar.program.addHelpText('after', `
Read-only:
  doctor     check both servers, credentials and the state prefix
  audit      inventory etcd: prefixes, sizes, leases, atomic groups, findings, copy-time estimate
  init       audit, then write a commented draft migration.yaml
  plan       resolve migration.yaml against the live keyspace: what each rule copies, keeps, rejects
  copy --dry-run  the exact operations a copy would send, computed by reading Consul too
  export     the mapped keyspace at a pinned revision as "consul kv import" JSON
  verify     parity of etcd and Consul at a consistent cut, re-checked over rounds (records verify/last)

Writes:
  copy       copy every copy rule at one pinned etcd revision; --resume after an interruption
  dualrun    replicate every etcd change into Consul until stopped (leases as sessions, --ha, /metrics)

Examples:
  migrate doctor
  migrate audit --format markdown > audit.md
  migrate doctor --format json --etcd-endpoints http://10.0.0.5:2379 --consul-addr http://127.0.0.1:8500
  migrate copy --dry-run --show-ops

Exit codes: 0 ok/parity, 1 findings or drift, 2 usage or configuration, 3 server unreachable/refused/failed,
4 refused by a guard or precondition, 130 interrupted, 70 internal error (a bug).`);
  registerDoctor(registrar);
  registerAudit(registrar);
  registerInit(registrar);
  registerPlan(registrar);
  registerCopy(registrar);
  registerVerify(registrar);
  registerDualRun(registrar);
  registerExport(registrar);
}
