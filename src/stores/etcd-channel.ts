import { createRequire } from 'node:module';
import type * as GrpcModule from '@grpc/grpc-js';
import { AUTHENTICATE, type UnaryMethod } from './etcd-codec.js';

// CommonJS: required, not imported, for the reason etcd.ts gives for etcd3.
const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js') as typeof GrpcModule;

/** How to reach etcd: what `EtcdSource` is given. */
export interface ChannelOptions {
  endpoints: string[];
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  auth?: { username: string; password: string };
  /** Deadline of one call in ms. */
  timeoutMs: number;
  /** grpc-js channel options (message size limits). */
  grpcOptions: GrpcModule.ChannelOptions;
}

/** gRPC's status codes for a member that cannot be reached or did not answer in time. */
const UNREACHABLE_CODES: ReadonlySet<number> = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]);

/**
 * etcd's unary calls over grpc-js directly: the connection every command
 * reads etcd through (Status, Range). It speaks to etcd the way `etcd3` does
 * (the same channel credentials and options, a `token` in each call's
 * metadata when a user is given), so etcd answers and fails alike.
 *
 * It stays on one member until a call to it finds it unreachable, then moves
 * to the next; the caller retries across members (`EtcdSource`). A token etcd
 * no longer accepts (expired, or issued before a restart) is replaced once per
 * call.
 */
export class EtcdChannel {
  private readonly clients: GrpcModule.Client[];
  private current: number;
  private token: Promise<string> | undefined;

  constructor(private readonly options: ChannelOptions) {
    // As etcd3: TLS with the given files, else TLS with the system's CAs if any endpoint is https, else plain.
    const credentials = options.tls?.ca
      ? grpc.credentials.createSsl(options.tls.ca, options.tls.key, options.tls.cert)
      : options.endpoints.some((e) => e.startsWith('https:'))
        ? grpc.credentials.createSsl()
        : grpc.credentials.createInsecure();
    this.clients = options.endpoints.map((e) => new grpc.Client(e.replace(/^https?:\/\//, ''), credentials, options.grpcOptions));
    this.current = Math.floor(Math.random() * this.clients.length);
  }

  close(): void {
    for (const client of this.clients) client.close();
  }

  async unary<Req, Res>(method: UnaryMethod<Req, Res>, request: Req): Promise<Res> {
    const index = this.current;
    try {
      return await this.callOn(index, method, request, await this.metadata(index));
    } catch (err) {
      if (this.options.auth && /invalid auth token/i.test(String((err as Error).message))) {
        this.token = undefined;
        return this.callOn(index, method, request, await this.metadata(index));
      }
      throw err;
    }
  }

  private async metadata(index: number): Promise<GrpcModule.Metadata> {
    const metadata = new grpc.Metadata();
    const auth = this.options.auth;
    if (!auth) return metadata;
    this.token ??= this.callOn(index, AUTHENTICATE, { name: auth.username, password: auth.password }, new grpc.Metadata()).then((r) => r.token);
    try {
      metadata.set('token', await this.token);
    } catch (err) {
      this.token = undefined;
      throw err;
    }
    return metadata;
  }

  private callOn<Req, Res>(index: number, method: UnaryMethod<Req, Res>, request: Req, metadata: GrpcModule.Metadata): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      this.clients[index]!.makeUnaryRequest(method.path, method.encode, method.decode, request, metadata, { deadline: Date.now() + this.options.timeoutMs }, (err, response) => {
        if (!err) return resolve(response!);
        // The next call goes to the next member; the first to fail moves it, not every call in flight.
        if (UNREACHABLE_CODES.has(err.code) && this.current === index) this.current = (index + 1) % this.clients.length;
        reject(err);
      });
    });
  }
}
