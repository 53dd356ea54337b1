import { createRequire } from 'node:module';
import type * as GrpcModule from '@grpc/grpc-js';
import { AUTHENTICATE, type UnaryMethod } from './etcd-codec.js';
import { sameTlsFiles, type TlsFiles, type TlsMaterial } from './tls.js';

// CommonJS: required, not imported, for the reason etcd.ts gives for etcd3.
const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js') as typeof GrpcModule;

/** How to reach etcd: what `EtcdSource` is given. */
export interface ChannelOptions {
  endpoints: string[];
  tls?: TlsMaterial;
  auth?: { username: string; password: string };
  /** Deadline of one call in ms. */
  timeoutMs: number;
  /** grpc-js channel options (message size limits). */
  grpcOptions: GrpcModule.ChannelOptions;
}

/** gRPC's status codes for a member that cannot be reached or did not answer in time. */
const UNREACHABLE_CODES: ReadonlySet<number> = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]);

/** One endpoint: its client, and the calls made on it that have not ended. */
interface Member {
  readonly address: string;
  readonly client: GrpcModule.Client;
  calls: number;
}

/**
 * etcd's unary calls over grpc-js directly: the connection every command
 * reads etcd through (Status, Range). It speaks to etcd the way `etcd3` does
 * (the same channel credentials and options, a `token` in each call's
 * metadata when a user is given), so etcd answers and fails alike.
 *
 * It stays on one member until a call finds it unreachable, then moves to the
 * next; the caller retries across members (`EtcdSource`). A member found
 * unreachable gets a new connection for its next call, as `etcd3` did: grpc-js
 * would keep the old one waiting out its reconnect backoff (1 s, growing 1.6
 * times per failure to 2 minutes), failing every call meanwhile with the old
 * error, long after the member is back (a lone endpoint that restarted failed
 * a whole read). A token etcd no longer accepts (expired, or issued before a
 * restart) is replaced once per call.
 */
export class EtcdChannel {
  private readonly members: Member[];
  /** Members replaced after they were found unreachable: each is closed once its last call ends. */
  private readonly retired = new Set<Member>();
  private credentials: GrpcModule.ChannelCredentials;
  /** The TLS files the credentials were made of. */
  private tls: TlsFiles | undefined;
  private current: number;
  private token: Promise<string> | undefined;
  private closed = false;

  constructor(private readonly options: ChannelOptions) {
    this.tls = options.tls;
    this.credentials = channelCredentials(options.tls, options.endpoints);
    this.members = options.endpoints.map((e) => this.connect(e.replace(/^https?:\/\//, '')));
    this.current = Math.floor(Math.random() * this.members.length);
    // Connects now, while the command loads and reads Consul, not on its first etcd call (about 20 ms).
    this.members[this.current]!.client.getChannel().getConnectivityState(true);
  }

  /** Closes every connection; a call made after, or failing after, opens none. */
  close(): void {
    this.closed = true;
    for (const member of [...this.members, ...this.retired]) member.client.close();
    this.retired.clear();
  }

  async unary<Req, Res>(method: UnaryMethod<Req, Res>, request: Req): Promise<Res> {
    if (this.closed) throw new Error('the etcd connection is closed');
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

  private connect(address: string): Member {
    return { address, client: new grpc.Client(address, this.credentials, this.options.grpcOptions), calls: 0 };
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
    const member = this.members[index]!;
    member.calls++;
    return new Promise<Res>((resolve, reject) => {
      member.client.makeUnaryRequest(method.path, method.encode, method.decode, request, metadata, { deadline: Date.now() + this.options.timeoutMs }, (err, response) => {
        member.calls--;
        if (err && UNREACHABLE_CODES.has(err.code)) this.replace(index, member);
        if (member.calls === 0 && this.retired.delete(member)) member.client.close();
        if (err) reject(err);
        else resolve(response!);
      });
    });
  }

  /** After `member` (at `index`) was found unreachable: a new connection in its place, and the next call to the next member. */
  private replace(index: number, member: Member): void {
    // The first of its failing calls does it, not every call in flight; a closed channel opens nothing again.
    if (this.closed || this.members[index] !== member) return;
    // TLS files renewed in place (the old certificate expired, say) are used from this connection on.
    const tls = this.options.tls?.reread?.();
    if (tls && !sameTlsFiles(tls, this.tls)) {
      this.tls = tls;
      this.credentials = channelCredentials(tls, this.options.endpoints);
    }
    this.members[index] = this.connect(member.address);
    this.retired.add(member);
    if (this.current === index) this.current = (index + 1) % this.members.length;
  }
}

/** As etcd3 makes them: TLS with the given files, else TLS with the system's CAs if any endpoint is https, else plain. */
function channelCredentials(tls: TlsFiles | undefined, endpoints: readonly string[]): GrpcModule.ChannelCredentials {
  if (tls?.ca) return grpc.credentials.createSsl(tls.ca, tls.key, tls.cert);
  return endpoints.some((e) => e.startsWith('https:')) ? grpc.credentials.createSsl() : grpc.credentials.createInsecure();
}
