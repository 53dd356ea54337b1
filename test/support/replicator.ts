import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import type { ConsulTarget } from '../../src/stores/consul.js';
import type { TxnOp } from '../../src/stores/types.js';

export interface ReplicatorOptions {
  etcd: Etcd3;
  target: ConsulTarget;
  /** The etcd prefix watched: holds the rule's `from` and the fence key. */
  watchPrefix: string;
  /** One plain rule (no leases, no escaping): `from` → `to` by substitution. */
  from: string;
  to: string;
  checkpointKey: string;
  /** Replicate changes after this revision. */
  fromRevision: number;
  /** How often queued changes are applied: each change lands 0 – tickMs late. */
  tickMs?: number;
  /** The fence is written this often, so the checkpoint follows etcd while the rule's keys are idle. */
  fenceMs?: number;
}

export interface Replicator {
  /** Resolves once a checkpoint `by: 'dualrun'` has been written. */
  started: Promise<void>;
  applied(): number;
  stop(): Promise<void>;
}

/**
 * A stand-in for the dual-run in verify tests, independent of the tool's own
 * code: it watches etcd with the `etcd3` client and applies the changes to
 * Consul a tick (default 700 ms) late, then writes the checkpoint document
 * `{schemaVersion: 1, revision, updated, by: 'dualrun'}`.
 *
 * The checkpoint it claims is the last revision of the *previous* tick (still
 * true: those changes were applied a tick ago), so Consul always runs a tick
 * ahead of the checkpoint. When verify has waited for the checkpoint to reach
 * its revision R, the writes of the following tick are already in Consul:
 * in-flight writes that a one-round verify reports and a multi-round verify
 * sees settle, deterministically.
 *
 * A fence key inside `watchPrefix` but outside `from` is rewritten every
 * `fenceMs`, standing in for etcd's progress notifications: it moves the
 * checkpoint past revisions written elsewhere in etcd (other tests).
 */
export function startReplicator(options: ReplicatorOptions): Replicator {
  const tickMs = options.tickMs ?? 700;
  const queue: IKeyValue[][] = [];
  let watcher: Watcher | undefined;
  let stopped = false;
  let applied = 0;
  let claimable = options.fromRevision;
  let markStarted: () => void = () => undefined;
  let failStarted: (err: unknown) => void = () => undefined;
  const started = new Promise<void>((resolve, reject) => {
    markStarted = resolve;
    failStarted = reject;
  });
  const fenceKey = `${options.watchPrefix}fence`;
  const fence = setInterval(() => void options.etcd.put(fenceKey).value(String(Date.now())).catch(() => undefined), options.fenceMs ?? 200);

  const tick = async () => {
    const batch = queue.splice(0).flat();
    const ops: TxnOp[] = [];
    let latest = claimable;
    for (const kv of batch) {
      latest = Math.max(latest, Number(kv.mod_revision));
      const key = kv.key.toString('utf8');
      if (!key.startsWith(options.from)) continue;
      const target = options.to + key.slice(options.from.length);
      // A delete event carries mod_revision of the delete and no value; version 0 marks it.
      ops.push(kv.version === '0' ? { verb: 'delete', key: target } : { verb: 'set', key: target, value: kv.value });
    }
    for (let i = 0; i < ops.length; i += 60) await options.target.applyTxn(ops.slice(i, i + 60));
    applied += ops.length;
    const doc = { schemaVersion: 1, revision: claimable, updated: new Date().toISOString(), by: 'dualrun' };
    await options.target.applyTxn([{ verb: 'set', key: options.checkpointKey, value: Buffer.from(JSON.stringify(doc)) }]);
    markStarted();
    claimable = latest;
  };

  const loop = (async () => {
    watcher = await options.etcd.watch().prefix(options.watchPrefix).startRevision(String(options.fromRevision + 1)).create();
    watcher.on('data', (res) => {
      // Deletes arrive as kvs with version 0; keep them in order with the puts.
      const kvs = res.events.map((e) => (e.type === 'Delete' ? { ...e.kv, version: '0' } : e.kv));
      if (kvs.length > 0) queue.push(kvs);
    });
    while (!stopped) {
      await new Promise((resolve) => setTimeout(resolve, tickMs));
      await tick();
    }
  })().catch((err) => {
    failStarted(err);
    throw err;
  });
  loop.catch(() => undefined);

  return {
    started,
    applied: () => applied,
    async stop() {
      stopped = true;
      clearInterval(fence);
      await loop;
      await watcher?.cancel();
    },
  };
}
