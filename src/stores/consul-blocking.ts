import { kvPath, toEntry, type WireEntry } from './consul.js';
import type { ConsulHttp } from './consul-http.js';
import { sleep } from './consul-http.js';
import type { TargetEntry, TargetStore } from './types.js';

/**
 * Consul blocking queries (`?index=N&wait=…`): the answer comes when the data
 * under the key or prefix changes past index N, or when the wait ends. The
 * dual-run follows the `owners` document and, after a cutover, each rule's
 * prefix this way; the Node client its phase documents and Consul watches;
 * `probe-latency` its scratch folder. Index 0 asks for the current state.
 */
export interface BlockingReader {
  readKey(key: string, index: number, signal: AbortSignal): Promise<{ entry: TargetEntry | undefined; index: number }>;
  readPrefix(prefix: string, index: number, signal: AbortSignal): Promise<{ entries: TargetEntry[]; index: number }>;
}

export class ConsulBlockingReader implements BlockingReader {
  constructor(private readonly http: ConsulHttp, private readonly waitSeconds = 30) {}

  async readKey(key: string, index: number, signal: AbortSignal): Promise<{ entry: TargetEntry | undefined; index: number }> {
    const { body, status, next } = await this.get(kvPath(key), {}, index, signal);
    if (status === 404) return { entry: undefined, index: next };
    const [wire] = JSON.parse(body.toString('utf8')) as WireEntry[];
    return { entry: wire ? toEntry(wire) : undefined, index: next };
  }

  async readPrefix(prefix: string, index: number, signal: AbortSignal): Promise<{ entries: TargetEntry[]; index: number }> {
    const { body, status, next } = await this.get(kvPath(prefix), { recurse: true }, index, signal);
    if (status === 404) return { entries: [], index: next };
    return { entries: (JSON.parse(body.toString('utf8')) as WireEntry[]).map(toEntry), index: next };
  }

  private async get(path: string, query: Record<string, boolean>, index: number, signal: AbortSignal) {
    const response = await this.http.request({
      method: 'GET',
      path,
      query: { ...query, ...(index > 0 ? { index, wait: `${this.waitSeconds}s` } : { consistent: true }) },
      accept: [404],
      signal,
      timeoutMs: (this.waitSeconds + 15) * 1000,
    });
    // Consul's rule: an index that goes backwards (a snapshot restore) resets the watch.
    const reported = Number(response.headers['x-consul-index'] ?? 0);
    const next = reported < index ? 0 : Math.max(1, reported);
    return { body: response.body, status: response.status, next };
  }
}

/** For stores without blocking queries (the in-memory pair): re-reads every `everyMs`. */
export class PollingReader implements BlockingReader {
  constructor(private readonly target: TargetStore, private readonly everyMs = 500) {}

  async readKey(key: string, index: number, signal: AbortSignal): Promise<{ entry: TargetEntry | undefined; index: number }> {
    if (index > 0) await sleep(this.everyMs, signal);
    return { entry: await this.target.readKey(key), index: index + 1 };
  }

  async readPrefix(prefix: string, index: number, signal: AbortSignal): Promise<{ entries: TargetEntry[]; index: number }> {
    if (index > 0) await sleep(this.everyMs, signal);
    const keys = await this.target.listKeys(prefix, signal);
    return { entries: await this.target.readEntries(keys, signal, { listed: keys }), index: index + 1 };
  }
}
