import { performance } from 'node:perf_hooks';
import { type EtcdSource } from '../stores/etcd.js';
import { prefixRange } from '../stores/key-range.js';
import type { ConsulTarget } from '../stores/consul.js';
import { ConsulBlockingReader } from '../stores/consul-blocking.js';
import { sleep } from '../stores/consul-http.js';
import { InterruptedError, ServerError } from '../errors.js';

/**
 * `migrate probe-latency`: how long a watcher takes to see a change, etcd
 * watch against Consul blocking query, measured on scratch keys.
 *
 * Each sample writes a fresh value to one scratch key in etcd and times until
 * an open etcd watch delivers that revision, then writes a fresh value to one
 * scratch key in Consul and times until a blocking query on the scratch
 * folder (`?recurse&index=…&wait=…`, the way applications watch a prefix)
 * returns with it. The samples alternate so both stores see the same machine
 * load. Latency is measured from just before the write is sent, so it includes
 * the write's own round trip (the write acknowledgement is reported apart).
 * The scratch keys are deleted at the end, also after an error or Ctrl-C.
 */

export interface LatencyProbeOptions {
  samples: number;
  /** Pause between samples. */
  intervalMs: number;
  /** The `wait` of the blocking query, in seconds (Consul caps it at 600). */
  waitSeconds: number;
  /** The etcd scratch folder (ends with `/`); the probe writes one key under it. */
  etcdFolder: string;
  /** The Consul scratch folder (ends with `/`); the probe writes one key under it and blocks on the folder. */
  consulFolder: string;
  /** How long one sample may take before the probe gives up on it, in ms. */
  sampleTimeoutMs?: number;
  signal?: AbortSignal;
  onSample?: (done: number, total: number) => void;
}

export interface LatencySummary {
  samples: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
}

export interface LatencySide {
  /** From just before the write until the watcher saw the change. */
  notify: LatencySummary;
  /** From just before the write until the server acknowledged it. */
  write: LatencySummary;
}

export interface LatencyReport {
  samples: number;
  intervalMs: number;
  waitSeconds: number;
  etcd: LatencySide;
  consul: LatencySide & {
    /** Blocking queries that returned without the probe's change in them (index moved elsewhere under the folder, or `wait` expired). */
    emptyWakeups: number;
  };
  /** Consul minus etcd, for each figure of `notify`. */
  difference: { p50Ms: number; p99Ms: number; maxMs: number };
}

/** Nearest-rank percentiles (pure). */
export function summarize(values: readonly number[]): LatencySummary {
  if (values.length === 0) return { samples: 0, p50Ms: 0, p99Ms: 0, maxMs: 0, meanMs: 0 };
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
  const round = (n: number) => Math.round(n * 100) / 100;
  return {
    samples: sorted.length,
    p50Ms: round(rank(50)),
    p99Ms: round(rank(99)),
    maxMs: round(sorted[sorted.length - 1]!),
    meanMs: round(sorted.reduce((a, b) => a + b, 0) / sorted.length),
  };
}

export function buildReport(options: Pick<LatencyProbeOptions, 'samples' | 'intervalMs' | 'waitSeconds'>, figures: { etcdNotify: number[]; etcdWrite: number[]; consulNotify: number[]; consulWrite: number[]; emptyWakeups: number }): LatencyReport {
  const etcd = { notify: summarize(figures.etcdNotify), write: summarize(figures.etcdWrite) };
  const consul = { notify: summarize(figures.consulNotify), write: summarize(figures.consulWrite), emptyWakeups: figures.emptyWakeups };
  const diff = (a: number, b: number) => Math.round((a - b) * 100) / 100;
  return {
    samples: options.samples,
    intervalMs: options.intervalMs,
    waitSeconds: options.waitSeconds,
    etcd,
    consul,
    difference: { p50Ms: diff(consul.notify.p50Ms, etcd.notify.p50Ms), p99Ms: diff(consul.notify.p99Ms, etcd.notify.p99Ms), maxMs: diff(consul.notify.maxMs, etcd.notify.maxMs) },
  };
}

function interrupted(): InterruptedError {
  return new InterruptedError('Interrupted: the probe stopped and deleted its scratch keys; no figures were reported.');
}

/** A value the watcher waits for, resolved with the time it was seen. */
class Waiters {
  private readonly pending = new Map<string, (at: number) => void>();

  wait(token: string, timeoutMs: number, what: string, signal?: AbortSignal): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(token);
        reject(new ServerError('probe_timeout', `${what} did not see the probe's change within ${timeoutMs} ms.`, { hint: 'The server is overloaded or the watch was cut; run `migrate doctor`, then probe again.' }));
      }, timeoutMs);
      const onAbort = () => {
        clearTimeout(timer);
        this.pending.delete(token);
        reject(interrupted());
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(token, (at) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve(at);
      });
    });
  }

  /** Resolves the waiter of `token`, if any; says whether there was one. */
  seen(token: string, at: number): boolean {
    const resolve = this.pending.get(token);
    if (!resolve) return false;
    this.pending.delete(token);
    resolve(at);
    return true;
  }
}

export async function probeLatency(source: EtcdSource, target: ConsulTarget, options: LatencyProbeOptions): Promise<LatencyReport> {
  if (!options.etcdFolder.endsWith('/') || !options.consulFolder.endsWith('/')) throw new RangeError('the scratch folders must end with "/"');
  const runId = `${Date.now().toString(36)}-${process.pid}`;
  const etcdKey = `${options.etcdFolder}latency-${runId}`;
  const consulFolder = `${options.consulFolder}latency-${runId}/`;
  const consulKey = `${consulFolder}k`;
  const timeoutMs = options.sampleTimeoutMs ?? 30_000;
  const figures = { etcdNotify: [] as number[], etcdWrite: [] as number[], consulNotify: [] as number[], consulWrite: [] as number[], emptyWakeups: 0 };
  const stop = new AbortController();
  const onAbort = () => stop.abort(options.signal!.reason);
  options.signal?.addEventListener('abort', onAbort, { once: true });

  const etcdWaiters = new Waiters();
  const status = await source.status();
  const watch = await source.watch(prefixRange(etcdKey), status.revision + 1);
  const etcdLoop = (async () => {
    for await (const message of watch) {
      if (message.kind !== 'revision') continue;
      const at = performance.now();
      for (const event of message.events) if (event.type === 'put') etcdWaiters.seen(event.entry.value.toString('utf8'), at);
    }
  })();

  const consulWaiters = new Waiters();
  let consulFailure: Error | undefined;
  const blocking = new ConsulBlockingReader(target.http, options.waitSeconds);
  const consulLoop = (async () => {
    let index = 0;
    let last = '';
    let primed = false;
    while (!stop.signal.aborted) {
      let entries;
      try {
        ({ entries, index } = await blocking.readPrefix(consulFolder, index, stop.signal));
      } catch (err) {
        if (stop.signal.aborted) return;
        consulFailure = err as Error;
        return;
      }
      const at = performance.now();
      const value = entries.find((e) => e.key === consulKey)?.value.toString('utf8') ?? '';
      if (value === last) {
        // The first answer (no index yet) is the starting state, not a wake-up.
        if (primed) figures.emptyWakeups++;
        primed = true;
        continue;
      }
      primed = true;
      last = value;
      consulWaiters.seen(value, at);
    }
  })();

  try {
    // The first blocking query returns at once (no index yet); let it, so every sample finds one blocked.
    await sleep(100, stop.signal);
    for (let i = 0; i < options.samples; i++) {
      if (stop.signal.aborted) throw interrupted();
      if (consulFailure) throw consulFailure;
      const token = `${runId}:${i}`;

      const etcdSeen = etcdWaiters.wait(token, timeoutMs, 'the etcd watch', stop.signal);
      const e0 = performance.now();
      await source.client.put(etcdKey).value(token).exec().catch((err: unknown) => {
        throw source.toError(err, `a put of the scratch key ${etcdKey} (the probe writes there)`);
      });
      const e1 = performance.now();
      const eSeen = await etcdSeen;
      figures.etcdWrite.push(e1 - e0);
      figures.etcdNotify.push(eSeen - e0);

      const consulSeen = consulWaiters.wait(token, timeoutMs, 'the Consul blocking query', stop.signal);
      const c0 = performance.now();
      await target.http.request({ method: 'PUT', path: `/v1/kv/${consulKey}`, body: token, signal: stop.signal });
      const c1 = performance.now();
      const cSeen = await consulSeen;
      figures.consulWrite.push(c1 - c0);
      figures.consulNotify.push(cSeen - c0);

      options.onSample?.(i + 1, options.samples);
      if (i + 1 < options.samples && options.intervalMs > 0) await sleep(options.intervalMs, stop.signal);
    }
  } finally {
    stop.abort(new Error('probe finished'));
    options.signal?.removeEventListener('abort', onAbort);
    await watch.close();
    await Promise.allSettled([etcdLoop, consulLoop]);
    // Scratch keys only, and always removed, whatever ended the probe.
    await Promise.allSettled([
      source.client.delete().key(etcdKey).exec(),
      target.http.request({ method: 'DELETE', path: `/v1/kv/${consulFolder}`, query: { recurse: true } }),
    ]);
  }
  return buildReport(options, figures);
}
