import { hostname } from 'node:os';
import { describe, expect, it } from 'vitest';
import { MemoryTarget } from '../stores/memory.js';
import { copyLockKey, runningCopy } from './lock.js';

const config = { id: 'demo', state: { prefix: '_migrate/' } };

function heldBy(holder: string): MemoryTarget {
  const target = new MemoryTarget();
  target.entries.set(copyLockKey(config), { key: copyLockKey(config), value: Buffer.from(JSON.stringify({ schemaVersion: 1, holder })), flags: 0, modifyIndex: 1, session: 'S-copy' });
  return target;
}

describe('runningCopy', () => {
  it('names the copy that holds the lock, on this host or another', async () => {
    expect(await runningCopy(heldBy(`${hostname()}:${process.ppid}`), config)).toBe(`${hostname()}:${process.ppid}`);
    expect(await runningCopy(heldBy('another-host:1'), config)).toBe('another-host:1');
    expect(await runningCopy(new MemoryTarget(), config)).toBeUndefined();
  });

  it('takes a copy that died on this host (SIGKILL; its lock lives until its session\'s TTL) for not running: a dual-run was refused for ~20 s', async () => {
    // No process has this pid (above Linux's largest pid_max).
    expect(await runningCopy(heldBy(`${hostname()}:99999999`), config)).toBeUndefined();
  });
});
