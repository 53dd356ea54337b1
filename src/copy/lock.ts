import type { MigrationConfig } from '../config/load.js';
import { hostname } from 'node:os';
import { diedHere, lockHolder } from '../dualrun/leader.js';
import { statePaths } from '../state/state.js';
import type { TargetStore } from '../stores/types.js';

/** The key of the lock one `migrate copy` per migration holds while it runs (see `acquireCopyLock`). */
export function copyLockKey(config: Pick<MigrationConfig, 'id' | 'state'>): string {
  return `${statePaths(config.state.prefix, config.id).copy}-lock`;
}

/**
 * The `host:pid` of the copy of this migration that holds the copy lock (running), if one does.
 * A copy that died on this host (SIGKILL) is not running, though its lock lives on until its
 * session's TTL (about 20 s), as the next copy takes it over at once.
 */
export async function runningCopy(target: Pick<TargetStore, 'readKey'>, config: Pick<MigrationConfig, 'id' | 'state'>): Promise<string | undefined> {
  const lock = await target.readKey(copyLockKey(config));
  if (!lock?.session) return undefined;
  const holder = lockHolder(lock.value);
  return diedHere(holder, hostname()) ? undefined : (holder ?? 'unknown holder');
}
