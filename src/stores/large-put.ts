import type { TargetStore } from './types.js';

/** How a value too large for any txn moves its key's lock, as a txn's `unlock` then `lock` would. */
export interface LargePutLock {
  /** The session holding the key now, to free it from: a PUT alone keeps that lock, and Consul deletes the key with that session. */
  release?: string;
  /** The session to hold it after (its etcd lease's). */
  acquire?: string;
  /** With neither: the ModifyIndex the write expects (0: not there). */
  cas?: number;
}

/**
 * A value too large for any txn, by single PUT (Consul's KV PUT takes one of
 * `release`, `acquire` and `cas`): written with `?release=` first when a
 * session other than its new one holds the key, then with `?acquire=` of the
 * new one. Between the two, the key holds its new value, unlocked. False when
 * Consul refused a step: the key is not held by `release`, or `acquire`'s
 * session is gone or does not hold it.
 */
export async function putLarge(target: Pick<TargetStore, 'putKey'>, key: string, value: Buffer, lock: LargePutLock): Promise<boolean> {
  const release = lock.release !== undefined && lock.release !== lock.acquire ? lock.release : undefined;
  if (release !== undefined && !(await target.putKey(key, value, { release }))) return false;
  if (lock.acquire !== undefined) return target.putKey(key, value, { acquire: lock.acquire });
  if (release !== undefined) return true;
  return target.putKey(key, value, lock.cas !== undefined ? { cas: lock.cas } : {});
}
