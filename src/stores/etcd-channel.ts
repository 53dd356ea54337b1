import http2 from 'node:http2';
import { AUTHENTICATE, type UnaryMethod } from './etcd-codec.js';
import { sameTlsFiles, type TlsFiles, type TlsMaterial } from './tls.js';

/** How to reach etcd: what `EtcdSource` is given. */
export interface ChannelOptions {
  endpoints: string[];
  tls?: TlsMaterial;
  auth?: { username: string; password: string };
  /** Deadline of one call in ms. */
  timeoutMs: number;
  /** The largest answer taken, in bytes; a larger one fails with RESOURCE_EXHAUSTED. */
  maxMessageBytes: number;
}

/** The gRPC status codes, by number (grpc/status.h). */
const STATUS_NAMES = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'] as const;
const DEADLINE_EXCEEDED = 4;
const RESOURCE_EXHAUSTED = 8;
const INTERNAL = 13;
const UNAVAILABLE = 14;

/** A member that cannot be reached or did not answer in time. */
const UNREACHABLE_CODES: ReadonlySet<number> = new Set([UNAVAILABLE, DEADLINE_EXCEEDED]);

/** A failed call, worded as grpc-js words one (`14 UNAVAILABLE: …`): the calls `etcd3` makes fail alike, and `EtcdSource` reads both. */
export class GrpcError extends Error {
  constructor(readonly code: number, readonly details: string) {
    super(`${code} ${STATUS_NAMES[code] ?? 'UNKNOWN'}: ${details}`);
    this.name = 'GrpcError';
  }
}

/** The flow-control window of each call and of the connection: a page of several MB arrives without waiting for window updates every 64 KiB. */
const STREAM_WINDOW_BYTES = 8 * 1024 * 1024;
const SESSION_WINDOW_BYTES = 32 * 1024 * 1024;

/** One endpoint: its HTTP/2 connection (made on first use), and the calls made on it that have not ended. */
interface Member {
  readonly authority: string;
  session: http2.ClientHttp2Session | undefined;
  /** Why the connection failed, once it did (a refused connection, a TLS handshake): the reason its pending calls fail with. */
  failure: Error | undefined;
  /** Whether the connection was made, and whether the peer has spoken HTTP/2 on it (sent its SETTINGS). */
  connected: boolean;
  http2: boolean;
  calls: number;
}

/**
 * etcd's unary calls (Status, Range, Authenticate) over `node:http2`: the
 * connection every command reads etcd through. gRPC's unary call is one HTTP/2
 * request: a POST of the message behind a 5-byte frame header, answered by one
 * framed message and a `grpc-status` trailer. Made by hand, as the messages are
 * (`etcd-codec.ts`), a command that only reads etcd loads no gRPC library (grpc-js
 * is 65 modules; `etcd3` loads it for watches, leases and writes), and a page
 * arrives in one buffer allocated once from its frame header. It speaks to etcd
 * as `etcd3` does: TLS when files are given or an endpoint is https, a `token`
 * header in each call when a user is given.
 *
 * It stays on one member until a call finds it unreachable, then moves to the
 * next; the caller retries across members (`EtcdSource`). A member found
 * unreachable gets a new connection for its next call (a lone endpoint that
 * restarted is used again at once). A token etcd no longer accepts (expired, or
 * issued before a restart) is replaced once per call.
 */
export class EtcdChannel {
  private readonly members: Member[];
  /** Members replaced after they were found unreachable: each is closed once its last call ends. */
  private readonly retired = new Set<Member>();
  private readonly secure: boolean;
  /** The TLS files connections are made with. */
  private tls: TlsFiles | undefined;
  private current: number;
  private token: Promise<string> | undefined;
  private closed = false;

  constructor(private readonly options: ChannelOptions) {
    this.tls = options.tls;
    // As etcd3 makes them: TLS with the given files, else TLS with the system's CAs if any endpoint is https, else plain.
    this.secure = Boolean(options.tls?.ca) || options.endpoints.some((e) => e.startsWith('https:'));
    this.members = options.endpoints.map((e) => this.member(e.replace(/^https?:\/\//, '')));
    this.current = Math.floor(Math.random() * this.members.length);
    // Connects now, while the command loads and reads Consul, not on its first etcd call.
    this.session(this.members[this.current]!);
  }

  /** Closes every connection; a call made after, or failing after, opens none. */
  close(): void {
    this.closed = true;
    for (const member of [...this.members, ...this.retired]) member.session?.destroy();
    this.retired.clear();
  }

  /**
   * Takes every connection for dead (a watch on the same etcd went silent: a
   * partition drops them all): each member's next call opens a new one,
   * rather than each call waiting out its deadline first.
   */
  reconnect(): void {
    if (this.closed) return;
    for (const [index, member] of this.members.entries()) if (member.session) this.retire(index, member);
  }

  /** A new connection in `member`'s place (at `index`) for the next call; its own is closed once its last call ends. */
  private retire(index: number, member: Member): void {
    this.members[index] = this.member(member.authority);
    if (member.calls > 0) this.retired.add(member);
    else member.session?.destroy();
  }

  async unary<Req, Res>(method: UnaryMethod<Req, Res>, request: Req): Promise<Res> {
    if (this.closed) throw new Error('the etcd connection is closed');
    const index = this.current;
    try {
      return await this.callOn(index, method, request, await this.headers(index));
    } catch (err) {
      if (this.options.auth && /invalid auth token/i.test(String((err as Error).message))) {
        this.token = undefined;
        return this.callOn(index, method, request, await this.headers(index));
      }
      throw err;
    }
  }

  private member(authority: string): Member {
    return { authority, session: undefined, failure: undefined, connected: false, http2: false, calls: 0 };
  }

  /** The member's connection: made now when it has none or etcd closed it (GOAWAY, a restart). */
  private session(member: Member): http2.ClientHttp2Session {
    if (member.session && !member.session.closed && !member.session.destroyed) return member.session;
    // One the peer closed may hold its socket half open.
    member.session?.destroy();
    const tls = this.tls;
    const session = http2.connect(`${this.secure ? 'https' : 'http'}://${member.authority}`, {
      ...(this.secure ? { ca: tls?.ca, cert: tls?.cert, key: tls?.key } : {}),
      settings: { initialWindowSize: STREAM_WINDOW_BYTES },
    });
    member.session = session;
    member.failure = undefined;
    member.connected = false;
    member.http2 = false;
    session.once('connect', () => {
      if (member.session === session) member.connected = true;
      // Not on a connection already gone (a peer that closed it at once): Node throws there.
      if (!session.destroyed && !session.closed) session.setLocalWindowSize(SESSION_WINDOW_BYTES);
    });
    session.once('remoteSettings', () => {
      if (member.session === session) member.http2 = true;
    });
    session.on('error', (err) => {
      if (member.session === session) member.failure = err;
    });
    // An idle connection does not keep the process alive; a call in flight does.
    session.unref();
    return session;
  }

  private async headers(index: number): Promise<http2.OutgoingHttpHeaders> {
    const auth = this.options.auth;
    if (!auth) return {};
    this.token ??= this.callOn(index, AUTHENTICATE, { name: auth.username, password: auth.password }, {}).then((r) => r.token);
    try {
      return { token: await this.token };
    } catch (err) {
      this.token = undefined;
      throw err;
    }
  }

  private callOn<Req, Res>(index: number, method: UnaryMethod<Req, Res>, request: Req, headers: http2.OutgoingHttpHeaders): Promise<Res> {
    const member = this.members[index]!;
    member.calls++;
    return this.call(member, method, request, headers).then(
      (response) => {
        this.ended(member);
        return response;
      },
      (err: unknown) => {
        if (err instanceof GrpcError && UNREACHABLE_CODES.has(err.code)) this.replace(index, member);
        this.ended(member);
        throw err;
      },
    );
  }

  private ended(member: Member): void {
    member.calls--;
    if (member.calls === 0) member.session?.unref();
    if (member.calls === 0 && this.retired.delete(member)) member.session?.destroy();
  }

  /** One unary call on `member`: the request, and the answer's message decoded, or the call's failure as a {@link GrpcError}. */
  private call<Req, Res>(member: Member, method: UnaryMethod<Req, Res>, request: Req, headers: http2.OutgoingHttpHeaders): Promise<Res> {
    const body = method.encode(request);
    const framed = Buffer.allocUnsafe(5 + body.length);
    framed[0] = 0;
    framed.writeUInt32BE(body.length, 1);
    body.copy(framed, 5);
    const session = this.session(member);
    session.ref();
    const timeoutMs = this.options.timeoutMs;
    return new Promise<Res>((resolve, reject) => {
      let settled = false;
      const fail = (code: number, details: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(new GrpcError(code, details));
      };
      const stream = session.request({
        ':method': 'POST',
        ':path': method.path,
        'content-type': 'application/grpc',
        te: 'trailers',
        'grpc-timeout': `${timeoutMs}m`,
        ...headers,
      });
      const timer = setTimeout(() => fail(DEADLINE_EXCEEDED, 'Deadline exceeded'), timeoutMs);
      let httpStatus = 0;
      let grpcStatus: string | undefined;
      let grpcMessage = '';
      const takeStatus = (h: http2.IncomingHttpHeaders) => {
        if (h['grpc-status'] !== undefined) {
          grpcStatus = String(h['grpc-status']);
          grpcMessage = decodeMessage(String(h['grpc-message'] ?? ''));
        }
      };
      stream.on('response', (h) => {
        httpStatus = Number(h[':status']);
        const type = String(h['content-type'] ?? '');
        if (httpStatus !== 200) return fail(UNAVAILABLE, `Received HTTP status code ${httpStatus}`);
        // Trailers-only: an error answered without a message.
        takeStatus(h);
        if (grpcStatus === undefined && !type.startsWith('application/grpc')) fail(UNAVAILABLE, `Protocol error: the answer is ${type || 'untyped'}, not gRPC`);
      });
      stream.on('trailers', takeStatus);
      // The answer's one message, in a buffer allocated from its frame header.
      const prefix = Buffer.alloc(5);
      let prefixUsed = 0;
      let message: Buffer | undefined;
      let used = 0;
      stream.on('data', (chunk: Buffer) => {
        let at = 0;
        if (!message) {
          at = Math.min(5 - prefixUsed, chunk.length);
          chunk.copy(prefix, prefixUsed, 0, at);
          prefixUsed += at;
          if (prefixUsed < 5) return;
          const length = prefix.readUInt32BE(1);
          if (prefix[0] !== 0) return fail(INTERNAL, 'etcd sent a compressed message, and none was asked for');
          if (length > this.options.maxMessageBytes) return fail(RESOURCE_EXHAUSTED, `Received message larger than max (${length} vs ${this.options.maxMessageBytes})`);
          message = Buffer.allocUnsafe(length);
        }
        const n = Math.min(chunk.length - at, message.length - used);
        chunk.copy(message, used, at, at + n);
        used += n;
      });
      stream.on('end', () => {
        if (settled) return;
        if (grpcStatus === undefined) return fail(UNAVAILABLE, this.closedReason(member));
        if (grpcStatus !== '0') return fail(Number(grpcStatus), grpcMessage);
        if (!message || used < message.length) return fail(INTERNAL, 'etcd\'s answer ended inside its message');
        settled = true;
        clearTimeout(timer);
        try {
          resolve(method.decode(message));
        } catch (err) {
          reject(new GrpcError(INTERNAL, `Failed to parse server response: ${(err as Error).message}`));
        }
      });
      stream.on('error', (err) => fail(UNAVAILABLE, this.reason(member, err)));
      stream.on('close', () => fail(UNAVAILABLE, this.reason(member, undefined) || (httpStatus === 0 ? this.closedReason(member) : `the stream was closed (HTTP/2 code ${stream.rstCode})`)));
      stream.end(framed);
    });
  }

  /** Why a call's connection ended before its status: the peer closed it, or took it without ever speaking HTTP/2 (a TLS endpoint named with http://). */
  private closedReason(member: Member): string {
    if (member.connected && !member.http2) return 'Protocol error: the server took the connection and closed it without speaking HTTP/2 (an https:// endpoint named with http://, or another service)';
    return 'the connection was closed before etcd sent the call\'s status';
  }

  /** Why a call failed: the connection's own failure (refused, TLS) rather than the cancelled stream's. */
  private reason(member: Member, err: Error | undefined): string {
    const cause = member.failure ?? (err?.cause instanceof Error ? err.cause : err);
    if (!cause) return '';
    const code = (cause as NodeJS.ErrnoException).code;
    return code && !cause.message.includes(code) ? `${cause.message} (${code})` : cause.message;
  }

  /** After `member` (at `index`) was found unreachable: a new connection in its place, and the next call to the next member. */
  private replace(index: number, member: Member): void {
    // The first of its failing calls does it, not every call in flight; a closed channel opens nothing again.
    if (this.closed || this.members[index] !== member) return;
    // TLS files renewed in place (the old certificate expired, say) are used from this connection on.
    const tls = this.options.tls?.reread?.();
    if (tls && !sameTlsFiles(tls, this.tls)) this.tls = tls;
    this.retire(index, member);
    if (this.current === index) this.current = (index + 1) % this.members.length;
  }
}

/** `grpc-message` is percent-encoded. */
function decodeMessage(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
