import { formatKey } from '../report/keys.js';
import type { KeyRange, SourceReader, SourceWatch } from '../stores/types.js';
import { GROUP_OPS_BOUNDS, Histogram, type HistogramBucket } from './aggregate.js';
import { SINGLE_KEY_WRITES_PER_SECOND, makeFinding, type Finding } from './findings.js';
import type { TxnCapacity } from './inventory.js';
import { prefixEndAtDepth } from './prefix-tree.js';
import type { KeyRouter } from './router.js';
import { replicationOps } from '../dualrun/plan-revision.js';

/**
 * `--sample <duration>`: watch live traffic for a while and measure writes
 * per second per prefix, and the sizes of live revision groups (etcd
 * transactions as the dual-run would replay them). Memory is bounded by the
 * prefix cap; events are counted, never kept.
 */
export interface SamplePrefix {
  prefix: string;
  writes: number;
  /** Writes to keys a copy rule would replicate. */
  replicatedWrites: number;
  writesPerSecond: number;
  replicatedPerSecond: number;
}

export interface SampleSummary {
  durationMs: number;
  revisions: number;
  writes: number;
  puts: number;
  deletes: number;
  writesPerSecond: number;
  revisionsPerSecond: number;
  /** The busiest prefixes (at the audit's depth). */
  prefixes: SamplePrefix[];
  /** Prefixes beyond the cap, counted together. */
  otherWrites: number;
  /** Replicated writes per revision. */
  groupSizes: HistogramBucket[];
  largestGroup: number;
  /** Live revisions whose replicated writes need more than one Consul txn. */
  groupsOverTarget: number;
  /** Watches that failed (the sample covers the others). */
  errors: string[];
}

export interface SampleInput {
  source: SourceReader;
  ranges: readonly KeyRange[];
  fromRevision: number;
  durationMs: number;
  depth: number;
  top: number;
  router: KeyRouter;
  capacity: TxnCapacity;
  signal?: AbortSignal;
  now?: () => number;
  /** Distinct prefixes counted individually (default 1,000). */
  prefixCap?: number;
}

/** How long after the window the watches may take to deliver the writes made in it (at least; the window's length if longer). */
const END_GRACE_MS = 5_000;

export async function sampleWrites(input: SampleInput): Promise<SampleSummary> {
  const now = input.now ?? Date.now;
  const prefixCap = input.prefixCap ?? 1000;
  const counts = new Map<string, { writes: number; replicated: number }>();
  const groupSizes = new Histogram(GROUP_OPS_BOUNDS);
  const errors: string[] = [];
  let revisions = 0;
  let writes = 0;
  let puts = 0;
  let deletes = 0;
  let largestGroup = 0;
  let groupsOverTarget = 0;
  const started = now();
  const watches: SourceWatch[] = [];
  let closed = false;
  const closeAll = () => {
    closed = true;
    for (const watch of watches) void watch.close();
  };
  // The window ends at the revision etcd has reached when the time is up: the writes up to it
  // count however late this process reads them (on a busy machine it reads the watch behind
  // etcd, and a rate measured by what arrived in time read low); later ones do not.
  let endRevision: number | undefined;
  let lastCall: NodeJS.Timeout | undefined;
  let asking: NodeJS.Timeout | undefined;
  const endWindow = () => {
    lastCall = setTimeout(closeAll, Math.max(END_GRACE_MS, input.durationMs));
    input.source.status().then((status) => {
      endRevision = status.revision;
      // A watch with no write after the end learns it has passed it from a progress notification,
      // which etcd sends once the watch has caught up: asked for until then.
      const ask = () => {
        for (const watch of watches) watch.requestProgress();
      };
      ask();
      asking = setInterval(ask, 250);
    }, closeAll);
  };
  const timer = setTimeout(endWindow, input.durationMs);
  const onAbort = () => closeAll();
  input.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await Promise.all(input.ranges.map(async (range) => {
      let watch: SourceWatch;
      try {
        watch = await input.source.watch(range, input.fromRevision);
      } catch (err) {
        errors.push((err as Error).message);
        return;
      }
      watches.push(watch);
      if (closed || now() - started >= input.durationMs || input.signal?.aborted) void watch.close();
      try {
        for await (const message of watch) {
          if (endRevision !== undefined && message.revision > endRevision) break;
          if (message.kind !== 'revision') {
            if (endRevision !== undefined && message.revision >= endRevision) break;
            continue;
          }
          revisions++;
          let replicated = 0;
          for (const event of message.events) {
            writes++;
            if (event.type === 'put') puts++;
            else deletes++;
            const key = event.entry.key;
            const routed = input.router.route(key, event.entry.value.length);
            const isReplicated = routed.kind === 'mapped' && !(event.entry.lease !== '0' && routed.rule.leases === 'skip');
            if (isReplicated) replicated += replicationOps(event, routed.rule.leases);
            const prefix = formatKey(key.subarray(0, prefixEndAtDepth(key, input.depth)));
            let count = counts.get(prefix);
            if (!count) {
              if (counts.size >= prefixCap) continue;
              count = { writes: 0, replicated: 0 };
              counts.set(prefix, count);
            }
            count.writes++;
            if (isReplicated) count.replicated++;
          }
          if (replicated > 0) {
            groupSizes.add(replicated);
            if (replicated > largestGroup) largestGroup = replicated;
            if (replicated > input.capacity.ops) groupsOverTarget++;
          }
          if (endRevision !== undefined && message.revision >= endRevision) break;
        }
      } catch (err) {
        errors.push((err as Error).message);
      }
    }));
  } finally {
    clearTimeout(timer);
    clearTimeout(lastCall);
    clearInterval(asking);
    input.signal?.removeEventListener('abort', onAbort);
    closeAll();
  }
  const durationMs = Math.max(1, Math.min(now() - started, Math.max(input.durationMs, 1)));
  const seconds = durationMs / 1000;
  const prefixes = [...counts.entries()]
    .map(([prefix, c]) => ({ prefix, writes: c.writes, replicatedWrites: c.replicated, writesPerSecond: round(c.writes / seconds), replicatedPerSecond: round(c.replicated / seconds) }))
    .sort((a, b) => b.writes - a.writes || (a.prefix < b.prefix ? -1 : 1));
  const shown = prefixes.filter((p, i) => i < input.top || p.replicatedPerSecond > SINGLE_KEY_WRITES_PER_SECOND);
  return {
    durationMs,
    revisions,
    writes,
    puts,
    deletes,
    writesPerSecond: round(writes / seconds),
    revisionsPerSecond: round(revisions / seconds),
    prefixes: shown,
    otherWrites: writes - shown.reduce((n, p) => n + p.writes, 0),
    groupSizes: groupSizes.buckets(),
    largestGroup,
    groupsOverTarget,
    errors,
  };
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}

/** Prefixes whose replicated write rate exceeds what single-key Consul writes sustain (pure). */
export function sampleFindings(sample: SampleSummary): Finding[] {
  const over = `over ${(sample.durationMs / 1000).toFixed(1)} s (single-key Consul writes: ~${SINGLE_KEY_WRITES_PER_SECOND}/s)`;
  const examples = sample.prefixes
    .filter((p) => p.replicatedPerSecond > SINGLE_KEY_WRITES_PER_SECOND)
    .map((p) => ({ prefix: p.prefix, count: p.replicatedWrites, detail: `${p.replicatedPerSecond} replicated writes/s ${over}` }));
  // The dual-run applies one ordered stream: prefixes each under the rate can be over it together, whatever --depth shows.
  const total = round(sample.prefixes.reduce((n, p) => n + p.replicatedPerSecond, 0));
  if (examples.length === 0 && total > SINGLE_KEY_WRITES_PER_SECOND) {
    examples.push({ prefix: '(the sampled prefixes together)', count: sample.prefixes.reduce((n, p) => n + p.replicatedWrites, 0), detail: `${total} replicated writes/s in all ${over}: the dual-run applies them in one ordered stream` });
  }
  if (examples.length === 0) return [];
  return [makeFinding('write_rate_high', 'warning', examples.length, examples)];
}
