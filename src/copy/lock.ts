import type { MigrationConfig } from '../config/load.js';
import { lockHolder } from '../dualrun/leader.js';
import { statePaths } from '../state/state.js';
import type { TargetStore } from '../stores/types.js';

/** The key of the lock one `migrate copy` per migration holds while it runs (see `acquireCopyLock`). */
export function copyLockKey(config: Pick<MigrationConfig, 'id' | 'state'>): string {
  return `${statePaths(config.state.prefix, config.id).copy}-lock`;
}

/** The `host:pid` of the copy of this migration that holds the copy lock (running), if one does. */
export async function runningCopy(target: Pick<TargetStore, 'readKey'>, config: Pick<MigrationConfig, 'id' | 'state'>): Promise<string | undefined> {
  const lock = await target.readKey(copyLockKey(config));
  return lock?.session ? (lockHolder(lock.value) ?? 'unknown holder') : undefined;
}
