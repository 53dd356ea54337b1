import type { CommandRegistrar } from './main.js';
import { registerAcl } from './commands/acl.js';
import { registerAudit } from './commands/audit.js';
import { registerCompletion } from './commands/completion.js';
import { registerCopy } from './commands/copy.js';
import { registerDoctor } from './commands/doctor.js';
import { registerDualRun } from './commands/dualrun.js';
import { registerExport } from './commands/export.js';
import { registerInit } from './commands/init.js';
import { registerPlan } from './commands/plan.js';
import { registerProbeLatency } from './commands/probe-latency.js';
import { registerVerify } from './commands/verify.js';
import { registerStatus } from './commands/status.js';
import { registerCutover } from './commands/cutover.js';
import { registerRollback } from './commands/rollback.js';
import { registerFinalize } from './commands/finalize.js';
import { groupCommandsByStage } from './stages.js';

/**
 * Every command the CLI offers, grouped by stage in `--help` (`stages.ts`). Each command
 * lives in `commands/<name>.ts`; its action lazy-imports the service and the
 * renderer so `--help` loads no gRPC or HTTP code.
 */
export function registerCommands(registrar: CommandRegistrar): void {
  registerDoctor(registrar);
  registerAudit(registrar);
  registerInit(registrar);
  registerPlan(registrar);
  registerCopy(registrar);
  registerVerify(registrar);
  registerDualRun(registrar);
  registerExport(registrar);
  registerAcl(registrar);
  registerCompletion(registrar);
  registerProbeLatency(registrar);
  registerStatus(registrar);
  registerCutover(registrar);
  registerRollback(registrar);
  registerFinalize(registrar);
  groupCommandsByStage(registrar.program, `Exit codes: 0 ok/parity, 1 findings or drift, 2 usage or configuration, 3 server unreachable/refused/failed,
4 refused by a guard or precondition, 130 interrupted, 70 internal error (a bug).`);
}
