import { ServerError } from '../errors.js';
import type { ConsulTarget } from './consul.js';
import type { BlockingReader } from './consul-blocking.js';
import { ConsulResponseError, isRetryable, sleep } from './consul-http.js';
import { SourceCompactedError, type EtcdSource } from './etcd.js';
import { prefixRange } from './key-range.js';

/**
 * The application's view of one store, for the Node client
 * (`etcd-consul-migrate/client`): single-key get/put/delete and a prefix watch
 * that survives connection trouble. Keys are in the store's own terms (bytes
 * for etcd, UTF-8 text for Consul); mapping between the two is the client's job.
 */
export interface AppKv<K> {
  readonly store: 'etcd' | 'consul';
  get(key: K): Promise<Buffer | undefined>;
  put(key: K, value: Buffer): Promise<void>;
  delete(key: K): Promise<void>;
  /**
   * Changes under `prefix` from now on. `onReady` is called once the watch
   * has its starting point (every change after that is delivered); `onError`
   * for trouble the watch retries through by itself.
   */
  watchPrefix(prefix: K, options: AppWatchOptions): AsyncIterable<AppKvChange<K>>;
}

export interface AppWatchOptions {
  signal: AbortSignal;
  onReady?: () => void;
  onError?: (err: Error) => void;
}

/** One change seen by a prefix watch; `value` is absent on deletes. */
export interface AppKvChange<K> {
  type: 'put' | 'delete';
  key: K;
  value?: Buffer;
  /**
   * Where the change stands in its store's order: etcd's revision; Consul's
   * ModifyIndex for a put, the answer's index for a delete (Consul keeps no
   * index of a deleted key: the delete came at or before it).
   */
  at: number;
}

const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5_000;

/** etcd through the tool's {@link EtcdSource} (its client and its error mapping). */
export class EtcdAppKv implements AppKv<Buffer> {
  readonly store = 'etcd';
  constructor(private readonly source: EtcdSource) {}

  async get(key: Buffer): Promise<Buffer | undefined> {
    return (await this.call('get', () => this.source.client.get(key).buffer())) ?? undefined;
  }

  async put(key: Buffer, value: Buffer): Promise<void> {
    await this.call('put', () => this.source.client.put(key).value(value).exec());
  }

  async delete(key: Buffer): Promise<void> {
    await this.call('delete', () => this.source.client.delete().key(key).exec());
  }

  /** etcd's current revision (a count-only read, so no value is transferred). */
  async revision(prefix: Buffer): Promise<number> {
    const range = prefixRange(prefix);
    const response = await this.call('read revision', () => this.source.client.kv.range({ key: range.start, range_end: range.end.length ? range.end : Buffer.from([0]), count_only: true }));
    return Number(response.header.revision);
  }

  async *watchPrefix(prefix: Buffer, options: AppWatchOptions): AsyncIterable<AppKvChange<Buffer>> {
    const { signal } = options;
    let next = 0;
    let delay = RETRY_MIN_MS;
    let ready = false;
    while (!signal.aborted) {
      try {
        if (next === 0) next = (await this.revision(prefix)) + 1;
        const watch = await this.source.watch(prefixRange(prefix), next);
        const stop = () => void watch.close();
        signal.addEventListener('abort', stop, { once: true });
        if (signal.aborted) stop();
        try {
          if (!ready) {
            ready = true;
            options.onReady?.();
          }
          delay = RETRY_MIN_MS;
          for await (const message of watch) {
            if (signal.aborted) return;
            if (message.kind !== 'revision') continue;
            next = message.revision + 1;
            for (const event of message.events) {
              yield event.type === 'put' ? { type: 'put', key: event.entry.key, value: event.entry.value, at: message.revision } : { type: 'delete', key: event.entry.key, at: message.revision };
            }
          }
        } finally {
          signal.removeEventListener('abort', stop);
          await watch.close();
        }
        if (signal.aborted) return;
        throw new ServerError('etcd_watch_ended', 'The etcd watch ended; resuming it.');
      } catch (err) {
        if (signal.aborted) return;
        // History compacted past our position: changes in between are lost to any watcher; go on from now.
        if (err instanceof SourceCompactedError) next = 0;
        options.onError?.(err as Error);
        await sleep(delay, signal);
        delay = Math.min(RETRY_MAX_MS, delay * 2);
      }
    }
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw this.source.toError(err, what);
    }
  }
}

/** Consul through the tool's {@link ConsulTarget} (its one HTTP path, retries and typed errors). */
export class ConsulAppKv implements AppKv<string> {
  readonly store = 'consul';
  constructor(private readonly target: ConsulTarget, private readonly blocking: BlockingReader) {}

  async get(key: string): Promise<Buffer | undefined> {
    return (await this.target.readKey(key))?.value;
  }

  async put(key: string, value: Buffer): Promise<void> {
    const ok = await this.target.putKey(key, value);
    if (!ok) throw new ServerError('consul_put_refused', `Consul did not write ${key}: the key is locked by a session.`, { hint: 'A session holds the key (a mirrored etcd lease); it is released when the session ends.' });
  }

  async delete(key: string): Promise<void> {
    await this.target.deleteKey(key);
  }

  /**
   * A recursive blocking query on `prefix`, diffed against the entries seen
   * so far (Consul reports state, not events, so changes between two answers
   * collapse into one). Memory holds the prefix's key list and modify indexes.
   */
  async *watchPrefix(prefix: string, options: AppWatchOptions): AsyncIterable<AppKvChange<string>> {
    const { signal } = options;
    let known: Map<string, number> | undefined;
    let index = 0;
    let delay = RETRY_MIN_MS;
    while (!signal.aborted) {
      let answer;
      try {
        answer = await this.blocking.readPrefix(prefix, known ? index : 0, signal);
      } catch (err) {
        if (signal.aborted) return;
        options.onError?.(err as Error);
        if (!isRetryable(err) && !(err instanceof ConsulResponseError)) throw err;
        await sleep(delay, signal);
        delay = Math.min(RETRY_MAX_MS, delay * 2);
        continue;
      }
      delay = RETRY_MIN_MS;
      index = answer.index;
      const current = new Map<string, number>();
      const changes: AppKvChange<string>[] = [];
      for (const entry of answer.entries) {
        current.set(entry.key, entry.modifyIndex);
        if (known && known.get(entry.key) !== entry.modifyIndex) changes.push({ type: 'put', key: entry.key, value: entry.value, at: entry.modifyIndex });
      }
      if (known) {
        for (const key of known.keys()) if (!current.has(key)) changes.push({ type: 'delete', key, at: answer.index });
      }
      const first = !known;
      known = current;
      if (first) options.onReady?.();
      for (const change of changes) {
        if (signal.aborted) return;
        yield change;
      }
    }
  }
}
