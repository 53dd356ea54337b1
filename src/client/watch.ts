import type { Mapping } from '../mapping/mapping.js';
import type { AppKv, AppKvChange } from '../stores/app-kv.js';
import { consulKeyInPlan, etcdKeyInPlan, planWatch, type WatchPlanEntry } from './keys.js';
import type { Owner } from './phase.js';

/** One change delivered by {@link KvWatch}, or the place where a rule switched owner. Keys are etcd keys. */
export type KvWatchEvent =
  | { type: 'put'; key: Buffer; value: Buffer; rule: string; store: Owner }
  | { type: 'delete'; key: Buffer; rule: string; store: Owner }
  /**
   * The rule's owner changed. Every event from `to` comes after this one;
   * events from `from` may still follow for a moment (`watchDrainMs`): the
   * old stream's last deliveries, and writes that were in flight; behind the
   * write fence of `cutover` and `rollback`, only up to the flip (after it,
   * `from` only shows copies of `to`'s writes, not delivered).
   * When the stores were not in step, re-read what matters.
   */
  | { type: 'switch'; rule: string; from: Owner; to: Owner };

export interface WatchOptions {
  /** Ends the watch when aborted. */
  signal?: AbortSignal;
}

/** @internal What a {@link KvWatch} needs from its client. */
export interface WatchHost {
  readonly mapping: Mapping;
  readonly closeSignal: AbortSignal;
  readonly watchDrainMs: number;
  watchRules(): readonly string[];
  settledOwner(rule: string): Promise<Owner>;
  stores(): { etcd: AppKv<Buffer>; consul: AppKv<string> };
  reportWatchError(rule: string, error: Error): void;
}

interface Subscription {
  entry: WatchPlanEntry;
  /** `cutoff`: set when the rule switched away: the old stream delivers nothing after it (etcd revision or Consul index). */
  current: { owner: Owner; abort: AbortController; cutoff?: number } | undefined;
}

/**
 * A watch over an etcd prefix that follows the migration: each rule's part is
 * watched on the store that owns the rule, and re-subscribed on the new owner
 * when it switches. Iterate with `for await`; the iteration ends on
 * {@link close}, on the `signal`, or when the client closes.
 */
export class KvWatch implements AsyncIterable<KvWatchEvent> {
  /** Resolves once every rule's watch has its starting point: every change from then on is delivered. */
  readonly ready: Promise<void>;
  /** Resolves when the watch has ended. */
  readonly closed: Promise<void>;
  private readonly subscriptions: Subscription[];
  private readonly queue: KvWatchEvent[] = [];
  private readonly abort = new AbortController();
  private wake: (() => void) | undefined;
  private ended = false;
  private resolveClosed!: () => void;

  /** @internal Created by `KvClient.watch`. */
  constructor(private readonly host: WatchHost, prefix: Buffer, options: WatchOptions) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.subscriptions = planWatch(host.mapping, host.watchRules(), prefix).map((entry) => ({ entry, current: undefined }));
    const stop = () => void this.close();
    host.closeSignal.addEventListener('abort', stop, { once: true });
    options.signal?.addEventListener('abort', stop, { once: true });
    if (options.signal?.aborted) stop();
    this.ready = Promise.all(
      this.subscriptions.map(async (sub) => {
        const owner = sub.entry.rule.action === 'copy' ? await host.settledOwner(sub.entry.rule.name) : 'etcd';
        // A switch that came first has already subscribed it on the new owner.
        if (!sub.current) await this.subscribe(sub, owner);
      }),
    ).then(() => undefined);
    this.ready.catch(() => undefined);
  }

  /** Ends the watch. */
  async close(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    this.abort.abort();
    for (const sub of this.subscriptions) sub.current?.abort.abort();
    this.wake?.();
    this.resolveClosed();
  }

  /**
   * @internal Moves the rule's part of the watch to `owner`; resolves once the new subscription is ready.
   * `cutoff`: where the old owner's order ends at the flip (its etcd revision or Consul index), when known.
   */
  async switchRule(rule: string, owner: Owner, cutoff?: number): Promise<void> {
    for (const sub of this.subscriptions) {
      if (sub.entry.rule.name !== rule || this.ended) continue;
      const old = sub.current;
      // Not subscribed yet: it waits for the switch to finish and starts on the new owner.
      if (!old || old.owner === owner) continue;
      old.cutoff = cutoff;
      // The marker goes in as the new stream becomes ready, before any of its events.
      await this.subscribe(sub, owner, () => this.push({ type: 'switch', rule, from: old.owner, to: owner }));
      // Writes that were in flight on the old owner still arrive for a moment.
      const timer = setTimeout(() => old.abort.abort(), this.host.watchDrainMs);
      timer.unref?.();
    }
  }

  private async subscribe(sub: Subscription, owner: Owner, whenReady?: () => void): Promise<void> {
    if (this.ended) return;
    const abort = new AbortController();
    this.abort.signal.addEventListener('abort', () => abort.abort(), { once: true });
    const state: NonNullable<Subscription['current']> = { owner, abort };
    sub.current = state;
    const afterFlip = (at: number) => state.cutoff !== undefined && at > state.cutoff;
    const { entry } = sub;
    const rule = entry.rule.name;
    let resolveReady!: () => void;
    const ready = new Promise<void>((resolve) => (resolveReady = resolve));
    let isReady = false;
    const onReady = () => {
      if (isReady) return;
      isReady = true;
      if (!abort.signal.aborted) whenReady?.();
      resolveReady();
    };
    abort.signal.addEventListener('abort', () => onReady(), { once: true });
    const options = { signal: abort.signal, onReady, onError: (err: Error) => this.host.reportWatchError(rule, err) };
    const { etcd, consul } = this.host.stores();
    const pump = async () => {
      if (owner === 'etcd') {
        for await (const change of etcd.watchPrefix(entry.etcdPrefix, options)) {
          if (afterFlip(change.at)) continue;
          if (etcdKeyInPlan(this.host.mapping, entry, change.key)) this.push(toEvent(change, change.key, rule, 'etcd'));
        }
      } else {
        for await (const change of consul.watchPrefix(entry.consulPrefix!, options)) {
          if (afterFlip(change.at)) continue;
          const key = consulKeyInPlan(this.host.mapping, entry, change.key);
          if (key) this.push(toEvent(change, key, rule, 'consul'));
        }
      }
    };
    pump().catch((err: unknown) => {
      onReady();
      if (!abort.signal.aborted) this.host.reportWatchError(rule, err as Error);
    });
    await ready;
  }

  private push(event: KvWatchEvent): void {
    if (this.ended) return;
    this.queue.push(event);
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<KvWatchEvent> {
    for (;;) {
      const event = this.queue.shift();
      if (event) {
        yield event;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

function toEvent<K>(change: AppKvChange<K>, key: Buffer, rule: string, store: Owner): KvWatchEvent {
  return change.type === 'put' ? { type: 'put', key, value: change.value ?? Buffer.alloc(0), rule, store } : { type: 'delete', key, rule, store };
}
