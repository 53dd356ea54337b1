import http from 'node:http';
import { STRICT_CHARSET_TEXT } from '../mapping/escape.js';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { MigrateError, ServerError, UsageError, ExitCode } from '../errors.js';
import { readFileSync } from 'node:fs';
import { redactUrl, registerSecret } from '../report/redact.js';
import { tlsFailureHint, tlsReason, type TlsFiles, type TlsMaterial } from './tls.js';

/**
 * The one HTTP path to Consul. A small typed wrapper over `node:http` with a
 * keep-alive agent: Node 20's global `fetch` reads large bodies about 50×
 * slower (reference §H), and the `consul` package's request layer hides long
 * error bodies (papi truncates `message` past 80 characters) and decodes values
 * as UTF-8. Bodies come back as bytes.
 */
export interface ConsulConnection {
  /** `http://host:port` or `https://host:port`. */
  address: string;
  token?: string;
  /** The file the token came from: read again when Consul no longer knows the token (rotated in place by Vault agent, say). */
  tokenFile?: string;
  datacenter?: string;
  namespace?: string;
  partition?: string;
  tls?: TlsMaterial & { verify?: boolean };
  /** Per-request timeout in ms (blocking queries add their wait). */
  timeoutMs?: number;
}

export interface ConsulRequest {
  method: 'GET' | 'PUT' | 'DELETE';
  path: string;
  query?: Record<string, string | number | boolean | undefined>;
  body?: Buffer | string;
  signal?: AbortSignal;
  /** Statuses the caller handles itself instead of getting an error (e.g. 404, 409). */
  accept?: readonly number[];
  timeoutMs?: number;
}

export interface ConsulResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** A Consul answer the caller can act on: status and Consul's own text. */
export class ConsulResponseError extends ServerError {
  readonly status: number;
  readonly responseBody: string;
  constructor(code: string, status: number, message: string, responseBody: string, hint?: string) {
    super(code, message, { hint, details: { status } });
    this.status = status;
    this.responseBody = responseBody;
  }
  /**
   * 429 and 5xx other than a refused session: worth trying again. So is a datacenter whose catalog
   * lists no server yet: it is coming back (seen in CI just after a restarted dc2 rejoined the WAN).
   */
  get retryable(): boolean {
    return this.code === 'consul_unavailable' || this.code === 'consul_datacenter_unreachable' || this.code === 'consul_no_server_node';
  }
}

/** A request or value too large for Consul (HTTP 413). Not retryable as is. */
export class ConsulTooLargeError extends ConsulResponseError {}

/** Consul knows no session with this id (HTTP 500 `invalid session`, or 404 on renew). */
export class ConsulSessionError extends ConsulResponseError {}

/** A `/v1/txn` rolled back because a check failed (HTTP 409). */
/** How long a token file found empty or half written is read again before its token's refusal stands, and how often (ms). */
const TOKEN_FILE_WAIT_MS = 10_000;
const TOKEN_FILE_POLL_MS = 250;

export class TxnFailedError extends MigrateError {
  readonly errors: { opIndex: number; what: string }[];
  constructor(errors: { opIndex: number; what: string }[]) {
    super('consul_txn_check_failed', ExitCode.server, `Consul rolled back a transaction: ${errors.map((e) => e.what).join('; ')}`, {
      hint: 'A key changed under the tool, or a session or lock check failed; the operation is re-planned or reported.',
      details: { errors },
    });
    this.errors = errors;
  }
}

/** Network-level failure: refused, reset, timed out. */
export class ConsulUnreachableError extends ServerError {
  readonly retryable = true;
}

/**
 * An https agent that makes each new connection with the TLS files as they are
 * then ({@link TlsMaterial.reread}): a client certificate renewed in place is
 * presented from the next connection on; connections kept alive keep theirs.
 */
class RenewingAgent extends https.Agent {
  private files: TlsFiles;

  constructor(options: https.AgentOptions, private readonly tls: TlsMaterial) {
    super(options);
    this.files = tls;
  }

  // Node's agent passes a copy of the request's options, made for this connection alone.
  override createConnection(options: https.RequestOptions, callback?: (err: Error | null, socket: Duplex) => void): ReturnType<https.Agent['createConnection']> {
    this.files = this.tls.reread?.() ?? this.files;
    return super.createConnection({ ...options, ca: this.files.ca, cert: this.files.cert, key: this.files.key }, callback);
  }
}

export class ConsulHttp {
  readonly address: string;
  private readonly url: URL;
  private readonly agent: http.Agent | https.Agent;
  private readonly module: typeof http | typeof https;
  private readonly headers: Record<string, string>;
  private readonly timeoutMs: number;
  private readonly datacenter: string | undefined;

  /** `agent`: the connection pool of another instance for the same server (see {@link withDatacenter}). */
  constructor(private readonly connection: ConsulConnection, agent?: http.Agent | https.Agent) {
    let url: URL;
    try {
      url = new URL(connection.address.includes('://') ? connection.address : `http://${connection.address}`);
    } catch {
      throw new UsageError('consul_address_invalid', `The Consul address ${JSON.stringify(redactUrl(connection.address))} is not a URL.`, {
        hint: 'Set target.address in migration.yaml, --consul-addr or CONSUL_HTTP_ADDR to http(s)://host:port.',
      });
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new UsageError('consul_address_invalid', `The Consul address must be http:// or https://, not ${url.protocol}//.`, {
        hint: 'Set target.address, --consul-addr or CONSUL_HTTP_ADDR to http(s)://host:port.',
      });
    }
    this.url = url;
    this.address = redactUrl(url.origin);
    const https_ = url.protocol === 'https:';
    this.module = https_ ? https : http;
    this.agent = agent ?? (https_
      ? new RenewingAgent({ keepAlive: true, maxSockets: 32, rejectUnauthorized: connection.tls?.verify ?? true }, connection.tls ?? {})
      : new http.Agent({ keepAlive: true, maxSockets: 32 }));
    this.headers = {};
    if (connection.token) this.headers['X-Consul-Token'] = connection.token;
    if (connection.namespace) this.headers['X-Consul-Namespace'] = connection.namespace;
    if (connection.partition) this.headers['X-Consul-Partition'] = connection.partition;
    this.timeoutMs = connection.timeoutMs ?? 30_000;
    this.datacenter = connection.datacenter;
  }

  /** The datacenter every request names (`?dc=`), if any. */
  get datacenterName(): string | undefined {
    return this.datacenter;
  }

  /** Same server, settings and connections with another datacenter (`?dc=`); closing either closes both. */
  withDatacenter(datacenter: string | undefined): ConsulHttp {
    return new ConsulHttp({ ...this.connection, datacenter }, this.agent);
  }

  close(): void {
    this.agent.destroy();
  }

  async request(req: ConsulRequest): Promise<ConsulResponse> {
    const params = new URLSearchParams();
    if (this.datacenter) params.set('dc', this.datacenter);
    for (const [name, value] of Object.entries(req.query ?? {})) {
      if (value === undefined || value === false) continue;
      params.set(name, value === true ? '' : String(value));
    }
    // `?recurse=` and `?recurse` mean the same to Consul; keep the bare form for readability in logs.
    const search = params.toString().replace(/=(&|$)/g, '$1');
    const path = `${this.url.pathname.replace(/\/$/, '')}${req.path}${search ? `?${search}` : ''}`;
    const body = req.body === undefined ? undefined : Buffer.isBuffer(req.body) ? req.body : Buffer.from(req.body);
    const sent = this.headers['X-Consul-Token'];
    let response = await this.send(req.method, path, body, req.signal, req.timeoutMs ?? this.timeoutMs);
    if (response.status === 403 && TOKEN_UNKNOWN.test(response.body.toString('utf8')) && (await this.tokenRenewed(sent, req.signal))) {
      response = await this.send(req.method, path, body, req.signal, req.timeoutMs ?? this.timeoutMs);
    }
    if (response.status >= 200 && response.status < 300) return response;
    if (req.accept?.includes(response.status)) return response;
    throw consulErrorFor(this.address, req.method, req.path, response.status, response.body, this.datacenter);
  }

  /**
   * The token file holds another token than the one sent (rotated in place): it is sent from now on.
   * A file found empty or half written (truncated, then written: a rotation in place) is read again
   * for up to TOKEN_FILE_WAIT_MS before the refusal stands (it ended a dual-run at once).
   */
  private async tokenRenewed(sent: string | undefined, signal: AbortSignal | undefined): Promise<boolean> {
    if (!this.connection.tokenFile) return false;
    for (const started = Date.now(); ; await sleep(TOKEN_FILE_POLL_MS, signal)) {
      let token: string;
      try {
        token = readFileSync(this.connection.tokenFile, 'utf8').trim();
      } catch {
        return false;
      }
      // The refused token is still the file's: no rotation. (Compared with what this request sent: another request
      // refused at the same moment may have taken the new token already, and this one goes again with it.)
      if (token === sent) return false;
      if (token !== '' && !/[^\x20-\x7e]/.test(token)) {
        if (token !== this.headers['X-Consul-Token']) {
          registerSecret(token);
          this.headers['X-Consul-Token'] = token;
        }
        return true;
      }
      if (Date.now() - started >= TOKEN_FILE_WAIT_MS || signal?.aborted) return false;
    }
  }

  private send(method: string, path: string, body: Buffer | undefined, signal: AbortSignal | undefined, timeoutMs: number): Promise<ConsulResponse> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string | number> = { ...this.headers };
      // Always send a length: Consul checks sizes on Content-Length (reference §A.2).
      headers['Content-Length'] = body?.length ?? 0;
      const request = this.module.request(
        {
          protocol: this.url.protocol,
          hostname: this.url.hostname,
          port: this.url.port,
          method,
          path,
          agent: this.agent,
          headers,
          signal,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
          res.on('error', (err) => reject(this.toNetworkError(err)));
        },
      );
      request.setTimeout(timeoutMs, () => request.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })));
      request.on('error', (err) => reject(signal?.aborted ? err : this.toNetworkError(err)));
      request.end(body);
    });
  }

  private toNetworkError(err: Error & { code?: string }): MigrateError {
    const code = err.code ?? '';
    // Before the certificate check: OpenSSL's text for a plain listener named with https:// mentions ssl too.
    if (code === 'EPROTO' || /wrong version number|packet length too long/i.test(err.message)) {
      return new ServerError('consul_tls_failed', `Consul at ${this.address} does not speak the protocol the address names (${err.message}).`, {
        hint: 'Use https:// for a TLS listener and http:// for a plain one.',
      });
    }
    if (/CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_OSSL|DEPTH_ZERO/i.test(code) || /certificate|ssl|tls/i.test(err.message)) {
      return new ServerError('consul_tls_failed', `TLS with Consul at ${this.address} failed: ${tlsReason(err.message)}.`, {
        hint: tlsFailureHint('Consul', err.message, code) ?? 'Check CONSUL_CACERT (or target.tls.ca): it must be the CA that signed the server certificate.',
      });
    }
    return new ConsulUnreachableError('consul_unreachable', `Consul at ${this.address} is unreachable (${code || err.message}).`, {
      hint: 'Start Consul or fix the address (target.address, --consul-addr or CONSUL_HTTP_ADDR).',
      details: { address: this.address, cause: code || err.message },
    });
  }
}

/**
 * Turns a Consul error answer into the tool's typed error (pure, so the
 * mapping is unit-tested without a server). Messages say what to do next.
 */
/** Consul's answer to a token it does not know (deleted, expired, or of another datacenter). */
const TOKEN_UNKNOWN = /ACL not found|token.*not found|invalid token/i;

/** What to do when Consul refuses a request the tool sized as fitting. */
export const TOO_LARGE_HINT = 'The servers\' txn_max_req_len / kv_max_value_size are lower than the tool assumed (it reads them from /v1/agent/self, which needs agent:read; without it, Consul\'s defaults): set target.limits.txnMaxBytes / maxValueBytes in migration.yaml to the servers\' values (an interrupted copy then goes on with --resume).';

/** For "Transaction contains too many operations": the op limit, which the tool takes from the agent's version. */
export const TOO_MANY_OPS_HINT = 'The agent takes fewer ops per txn than the tool used (64 before Consul 1.14, 128 since, read from its version): target.limits.txnMaxOps in migration.yaml is above the agent\'s limit (lower it, or remove it), or the agent was replaced by an older release while the tool ran (run the command again: it reads the limit again; an interrupted copy goes on with --resume).';

/** Consul 1.21.5's answer to a key outside its character set (or holding ".."), on every /v1/kv request. */
export const INVALID_KEY_NAME = /^invalid key name/;

/** What to do about Consul 1.21.5's key rule. */
export const STRICT_KEYS_HINT = `Consul 1.21.5 serves only keys of ${STRICT_CHARSET_TEXT} without ".." on /v1/kv (1.21.6 lifted the rule): upgrade the Consul agents, or rename the keys in etcd.`;

export function consulErrorFor(address: string, method: string, path: string, status: number, body: Buffer, datacenter?: string): MigrateError {
  const text = body.toString('utf8').trim();
  // In messages, one line of at most 200 characters: another server's error page would fill the screen.
  const firstLine = text.split('\n')[0]!.trim();
  const shown = firstLine.length > 200 || firstLine.length < text.length ? `${firstLine.slice(0, 200)} …` : firstLine;
  const where = `${method} ${path.split('?')[0]}`;
  if (status === 409 && path === '/v1/txn') return txnError(parseTxnErrors(body), method, path);
  if (status === 403 || status === 401) {
    if (TOKEN_UNKNOWN.test(text)) {
      return new ConsulResponseError('consul_token_refused', status, `Consul at ${address} refused the token (${shown}).`, text, 'Check CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE, or target.tokenFile / target.tokenEnv in migration.yaml: the token does not exist in this datacenter. A token file is read again when Consul refuses its token: a file rotated in place is taken without a restart, but a token given in the environment is not.');
    }
    return new ConsulResponseError('consul_permission_denied', status, `Consul denied ${where}: ${shown || 'Permission denied'}.`, text, PERMISSION_HINT);
  }
  // Go's TLS listener answers a plain request with this 400: the address names the wrong scheme.
  if (status === 400 && /HTTP request to an HTTPS server/i.test(text)) {
    return new ConsulResponseError('consul_tls_required', status, `Consul at ${address} serves HTTPS only; the tool spoke plain HTTP to it and sent nothing else.`, text, 'Use an https:// address (or CONSUL_HTTP_SSL=true) with CONSUL_CACERT set to the CA that signed the server certificate.');
  }
  if (status === 413) {
    return new ConsulTooLargeError('consul_too_large', 413, `Consul refused ${where} as too large: ${shown}`, text, /too many operations/i.test(text) ? TOO_MANY_OPS_HINT : TOO_LARGE_HINT);
  }
  // A server whose session_ttl_min is above the 10 s the tool's sessions have (its locks, leases raised to it): no run can take a lock.
  if (/Invalid Session TTL/i.test(text)) {
    return new ConsulResponseError('consul_session_ttl_refused', status, `Consul refused the TTL of a session (${where}): ${shown}. The tool's sessions (its copy and leader locks, and etcd leases under 10 s raised to 10 s) have a 10 s TTL; the servers' session_ttl_min is higher.`, text, 'Set session_ttl_min to 10s or less on the Consul servers (its default is 10s) and restart them, then run `migrate doctor`.');
  }
  if (/invalid session|Session id '.*' not found|missing session/i.test(text)) {
    return new ConsulSessionError('consul_session_invalid', status, `Consul does not know the session used by ${where}: ${shown}.`, text, 'The session expired or was destroyed; the tool re-creates sessions for live etcd leases on the next run.');
  }
  // Another datacenter that does not answer: its servers are down (the agent cannot dial them) or it left the WAN federation.
  // (Consul 1.22 answers "Remote DC has no server currently reachable" for minutes after the datacenter's servers died, "rpc error making call: EOF" at once.)
  if (status >= 500 && (/No path to datacenter|Remote DC has no server currently reachable/i.test(text) || (datacenter && /failed to get conn|stream closed|connection refused|rpc error making call: EOF/i.test(text)))) {
    const dc = datacenter ?? '(the one named)';
    return new ConsulResponseError('consul_datacenter_unreachable', status, `Consul at ${address} has no path to datacenter ${dc} (${where}): its servers are down or not joined over the WAN.`, text, 'Check the datacenter\'s servers and the WAN federation (`consul members -wan`), then run the command again (a running dual-run retries by itself).');
  }
  // Consul 1.21.5 alone refuses, on /v1/kv, keys outside its character set (reference §A.1.1): the key itself, not a busy server.
  if (status === 500 && INVALID_KEY_NAME.test(text)) {
    return new ConsulResponseError('consul_key_not_servable', status, `Consul refused the key of ${where}: ${shown}.`, text, STRICT_KEYS_HINT);
  }
  if (status === 429 || status >= 500) {
    return new ConsulResponseError('consul_unavailable', status, `Consul answered ${where} with HTTP ${status}: ${shown || '(empty body)'}.`, text, 'Consul is overloaded or has no leader, and stayed so while the tool retried with backoff: run the command again once it has a leader (a running dual-run retries by itself).');
  }
  // Go's mux answers unclean paths with 301 (older releases) or 307 (Consul 1.13 and 1.22 alike).
  if (status === 301 || status === 302 || status === 307 || status === 308) {
    return new ConsulResponseError('consul_key_not_servable', status, `Consul redirected ${where}: the key is not one Consul serves at its own path.`, text, 'The key has a leading "/", an empty segment or a "."/".." segment; map it to a servable key (see the README, key escaping).');
  }
  // Every Consul agent serves its leader: a 404 there means the address names some other HTTP server.
  const notConsul = status === 404 && where === 'GET /v1/status/leader';
  return new ConsulResponseError('consul_request_failed', status, `Consul answered ${where} with HTTP ${status}: ${shown || '(empty body)'}.`, text, notConsul
    ? `Every Consul agent serves ${where}, so ${address} is not a Consul HTTP API (another service's port, such as etcd's?). Fix target.address, --consul-addr or CONSUL_HTTP_ADDR (Consul's HTTP port defaults to 8500).`
    : undefined);
}

const PERMISSION_HINT = 'Grant the token the permission `migrate acl` lists (the migrator policy; for a CI verify, the verifier policy), then run `migrate doctor`.';

/**
 * A txn Consul rolled back: a check that failed (a key changed, a lock held),
 * which the caller re-plans or reports; or an op the token may not do, which
 * no retry mends (Consul answers that with 409 too).
 */
export function txnError(errors: { opIndex: number; what: string }[], method: string, path: string): MigrateError {
  const denied = errors.find((e) => /permission denied/i.test(e.what));
  if (denied) {
    return new ConsulResponseError('consul_permission_denied', 409, `Consul denied ${method} ${path.split('?')[0]}: ${denied.what.slice(0, 200)}.`, denied.what, PERMISSION_HINT);
  }
  return new TxnFailedError(errors);
}

function parseTxnErrors(body: Buffer): { opIndex: number; what: string }[] {
  try {
    const parsed = JSON.parse(body.toString('utf8')) as { Errors?: { OpIndex: number; What: string }[] | null };
    return (parsed.Errors ?? []).map((e) => ({ opIndex: e.OpIndex, what: e.What }));
  } catch {
    return [{ opIndex: -1, what: body.toString('utf8').slice(0, 500) }];
  }
}

/** Whether an error is worth retrying as is (network trouble, 429, 5xx). */
export function isRetryable(err: unknown): boolean {
  return (err instanceof ConsulResponseError && err.retryable) || err instanceof ConsulUnreachableError;
}

export interface RetryOptions {
  /** Tries in all when Consul cannot be reached (default 6, about 1.5–3 s). */
  attempts?: number;
  /**
   * Tries in all when Consul answers 429 or 5xx: overloaded, or electing a
   * leader (default 10, about 10–20 s, long enough for an election; with
   * only `attempts` given, that number).
   */
  busyAttempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  /**
   * No retry starts after this long in all (default 60 s): a Consul that
   * accepts connections but never answers (stopped, overloaded) costs a whole
   * request timeout per try, and six tries of 30 s left commands silent for minutes.
   */
  maxElapsedMs?: number;
  signal?: AbortSignal;
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
  /** Source of randomness for jitter (injected so tests are repeatable). */
  random?: () => number;
}

/** Runs `fn`, retrying retryable failures with exponential backoff and jitter. */
export async function withRetries<T>(fn: () => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const attempts = options.attempts ?? 6;
  const busyAttempts = options.busyAttempts ?? options.attempts ?? 10;
  const base = options.baseDelayMs ?? 100;
  const max = options.maxDelayMs ?? 5_000;
  const random = options.random ?? Math.random;
  const deadline = Date.now() + (options.maxElapsedMs ?? 60_000);
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      // Another datacenter whose servers are gone answers at once, for minutes: one more try, not ten (a dual-run's
      // lane retries it with its own backoff; retried here, each request held a stopping dual-run ~10 s).
      const tries = err instanceof ConsulResponseError ? (err.code === 'consul_datacenter_unreachable' ? Math.min(2, busyAttempts) : busyAttempts) : attempts;
      if (attempt >= tries || !isRetryable(err) || options.signal?.aborted) throw err;
      const delay = Math.min(max, base * 2 ** (attempt - 1)) * (0.5 + random() / 2);
      if (Date.now() + delay >= deadline) throw err;
      options.onRetry?.(err, attempt, delay);
      await sleep(delay, options.signal);
    }
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
