import type { MigrationConfig } from '../config/load.js';
import { STRICT_CHARSET_TEXT } from '../mapping/escape.js';
import { ExitCode, isMigrateError } from '../errors.js';
import { DEFAULT_MAX_VALUE_BYTES, DEFAULT_TXN_MAX_BYTES, txnMaxOpsForVersion } from '../stores/txn-batcher.js';
import type { TargetInfo, TargetStore } from '../stores/types.js';

/** Whether the byte limits are Consul's defaults, assumed: the agent did not show its own (no agent:read) and migration.yaml does not set both. */
export function byteLimitsAssumed(info: Pick<TargetInfo, 'maxValueBytes'>, configured: { maxValueBytes?: number; txnMaxBytes?: number }): boolean {
  return info.maxValueBytes === undefined && (configured.maxValueBytes === undefined || configured.txnMaxBytes === undefined);
}

/** The limits a read-only report (audit, plan) judges keys and values against, and where they come from. */
export interface TargetLimits {
  txnMaxOps: number;
  txnMaxBytes: number;
  maxValueBytes: number;
  /** The agent refuses `/v1/kv` keys outside Consul 1.21.5's character set. */
  strictKeys: boolean;
  basis: string;
}

/**
 * `target.limits` from the file, else what the target says (its version sets
 * the op limit; its configuration, when the token may read it, the byte
 * limits), else Consul's defaults with the pre-1.14 op limit of 64, the safe
 * assumption. A target that does not answer is no error: audit and plan run
 * before Consul is ready, and say on what basis they judged. One that answers
 * that the settings are wrong (an unknown datacenter) is.
 */
export async function resolveTargetLimits(config: MigrationConfig, target: Pick<TargetStore, 'info'> | undefined): Promise<TargetLimits> {
  const configured = config.target.limits ?? {};
  let txnMaxOps = configured.txnMaxOps;
  let enforced: { txnMaxBytes?: number; maxValueBytes?: number; strictKeys?: boolean } = {};
  let basis: string | undefined;
  if (txnMaxOps !== undefined) basis = 'target.limits.txnMaxOps in migration.yaml';
  if (target) {
    try {
      const info = await target.info();
      enforced = info;
      txnMaxOps ??= info.version === 'unknown' ? 64 : txnMaxOpsForVersion(info.version);
      basis ??= info.version === 'unknown' ? 'Consul answered but its version is unreadable (the token lacks agent:read): assuming 64 ops' : `Consul ${info.version} at ${info.address}`;
      if (byteLimitsAssumed(info, configured)) basis += '; its byte limits unread (the token may not read the agent): Consul\'s defaults assumed, set target.limits.maxValueBytes and txnMaxBytes if the servers use others';
      if (info.strictKeys) basis += `; the agent refuses keys outside Consul 1.21.5's character set (${STRICT_CHARSET_TEXT})`;
    } catch (err) {
      // A setting to fix (a datacenter the agent does not know: --datacenter dc9) is refused as by every command.
      if (!isMigrateError(err) || err.exitCode === ExitCode.usage) throw err;
      txnMaxOps ??= 64;
      basis ??= `Consul could not be asked (${err.message.split('\n')[0]}): assuming the pre-1.14 limit of 64 ops`;
    }
  } else {
    txnMaxOps ??= 64;
    basis ??= 'no target given: assuming the pre-1.14 limit of 64 ops';
  }
  return {
    txnMaxOps,
    txnMaxBytes: configured.txnMaxBytes ?? enforced.txnMaxBytes ?? DEFAULT_TXN_MAX_BYTES,
    maxValueBytes: configured.maxValueBytes ?? enforced.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES,
    strictKeys: enforced.strictKeys === true,
    basis: basis!,
  };
}
