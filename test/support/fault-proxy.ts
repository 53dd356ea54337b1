import { createServer, connect, type Server, type Socket } from 'node:net';

/** What a {@link FaultProxy} has done so far, for the test's report. */
export interface FaultCounts {
  connections: number;
  resets: number;
  blackholes: number;
  delays: number;
}

interface Pipe {
  client: Socket;
  upstream: Socket;
  /** Open, and forwarding nothing for good (see {@link FaultProxy.strand}). */
  stranded?: boolean;
}

/**
 * A TCP proxy on loopback between the tool and one server, so tests can break
 * the network on command (issue 8, faults):
 * - `reset()` aborts every open connection with a TCP RST, both sides;
 * - `blackhole()` stops forwarding in both directions (bytes are held, as a
 *   partition holds packets until TCP gives up), new connections included;
 *   `heal()` flushes what was held, `heal({ reset: true })` resets instead;
 * - `delay(ms)` holds every chunk that long before forwarding it, in order;
 * - `strand()` silences every open connection for good (its bytes dropped, no
 *   reset: a NAT or load balancer that dropped it, a peer gone without a word),
 *   while new connections pass.
 * Speaks no protocol: works for etcd's gRPC (HTTP/2) and Consul's HTTP alike.
 */
export class FaultProxy {
  readonly counts: FaultCounts = { connections: 0, resets: 0, blackholes: 0, delays: 0 };
  private readonly pipes = new Set<Pipe>();
  private delayMs = 0;
  private holding = false;
  private held: (() => void)[] = [];

  private constructor(private readonly server: Server, readonly port: number) {}

  /** Starts a proxy to `host:port` on a free loopback port. */
  static async start(upstream: { host: string; port: number }): Promise<FaultProxy> {
    let proxy: FaultProxy | undefined;
    const server = createServer({ noDelay: true }, (client) => proxy!.accept(client, upstream));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const address = server.address();
    if (!address || typeof address !== 'object') throw new Error('the fault proxy has no port');
    proxy = new FaultProxy(server, address.port);
    return proxy;
  }

  /** Starts a proxy in front of an `http(s)://host:port` address; `url` is the same address through the proxy. */
  static async forUrl(address: string): Promise<{ proxy: FaultProxy; url: string }> {
    const url = new URL(address);
    const proxy = await FaultProxy.start({ host: url.hostname, port: Number(url.port) });
    url.port = String(proxy.port);
    return { proxy, url: url.toString().replace(/\/$/, '') };
  }

  private accept(client: Socket, upstream: { host: string; port: number }): void {
    this.counts.connections++;
    const server = connect({ host: upstream.host, port: upstream.port, noDelay: true });
    const pipe: Pipe = { client, upstream: server };
    this.pipes.add(pipe);
    const forward = (from: Socket, to: Socket) => {
      // One ordered queue per direction, so a delay never reorders bytes.
      let chain = Promise.resolve();
      from.on('data', (chunk: Buffer) => {
        // Due at arrival + delay: a latency, not a throughput cap.
        const due = Date.now() + this.delayMs;
        chain = chain.then(async () => {
          const wait = due - Date.now();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
          if (this.holding) await new Promise<void>((r) => this.held.push(r));
          if (!pipe.stranded && !to.destroyed && to.writable) to.write(chunk);
        }).catch(() => undefined);
      });
      from.on('end', () => void chain.then(() => to.end()));
    };
    forward(client, server);
    forward(server, client);
    const close = () => {
      this.pipes.delete(pipe);
      if (!client.destroyed) client.destroy();
      if (!server.destroyed) server.destroy();
    };
    client.on('error', close);
    server.on('error', close);
    client.on('close', close);
    server.on('close', close);
  }

  /** Open connections and chunks held by a blackhole, for a failing test's report. */
  describe(): string {
    return `${this.pipes.size} open connections, ${this.held.length} chunks held, delay ${this.delayMs} ms, ${JSON.stringify(this.counts)}`;
  }

  /** Aborts every open connection with a TCP RST on both sides. */
  reset(): number {
    let n = 0;
    for (const pipe of this.pipes) {
      pipe.client.resetAndDestroy();
      pipe.upstream.resetAndDestroy();
      n++;
    }
    this.pipes.clear();
    this.counts.resets++;
    return n;
  }

  /** Holds every byte in both directions until {@link heal}. */
  blackhole(): void {
    this.holding = true;
    this.counts.blackholes++;
  }

  /** Ends a blackhole: delivers what was held, or resets the connections that were cut off. */
  heal(options: { reset?: boolean } = {}): void {
    this.holding = false;
    if (options.reset) this.reset();
    const held = this.held;
    this.held = [];
    for (const release of held) release();
  }

  /** Silences the open connections for good: they stay open and forward nothing more; new ones pass. */
  strand(): number {
    for (const pipe of this.pipes) pipe.stranded = true;
    return this.pipes.size;
  }

  /** Delays every chunk by `ms` (0 ends the delay). */
  delay(ms: number): void {
    this.delayMs = ms;
    if (ms > 0) this.counts.delays++;
  }

  async close(): Promise<void> {
    this.heal();
    for (const pipe of this.pipes) {
      pipe.client.destroy();
      pipe.upstream.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Faults a chaos loop injected, by kind and proxy. */
export interface ChaosLog {
  injected: number;
  byKind: Record<string, number>;
}

/**
 * Injects a random fault every `everyMs` (±50%) into one of `proxies` until
 * stopped: a reset, a delay for a while, or a short blackhole that heals by
 * delivering or by resetting. `random` is passed in so a failing seed can be replayed.
 */
export function startChaos(proxies: Record<string, FaultProxy>, options: { everyMs: number; blackholeMs: number; delayMs: number; random: () => number }): { stop(): Promise<ChaosLog> } {
  const log: ChaosLog = { injected: 0, byKind: {} };
  const names = Object.keys(proxies);
  let stopped = false;
  const count = (kind: string) => {
    log.injected++;
    log.byKind[kind] = (log.byKind[kind] ?? 0) + 1;
  };
  const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const loop = (async () => {
    while (!stopped) {
      await pause(options.everyMs * (0.5 + options.random()));
      if (stopped) break;
      const name = names[Math.floor(options.random() * names.length)]!;
      const proxy = proxies[name]!;
      const kind = Math.floor(options.random() * 4);
      if (kind === 0) {
        proxy.reset();
        count(`${name}.reset`);
      } else if (kind === 1) {
        proxy.delay(options.delayMs);
        count(`${name}.delay`);
        await pause(options.blackholeMs);
        proxy.delay(0);
      } else {
        proxy.blackhole();
        count(`${name}.blackhole-${kind === 2 ? 'deliver' : 'reset'}`);
        await pause(options.blackholeMs);
        proxy.heal({ reset: kind === 3 });
      }
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      for (const proxy of Object.values(proxies)) {
        proxy.delay(0);
        proxy.heal();
      }
      return log;
    },
  };
}
