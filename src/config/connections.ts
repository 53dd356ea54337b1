import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import { dirname, resolve } from 'node:path';
import { UsageError } from '../errors.js';
import { redactUrl, registerSecret } from '../report/redact.js';
import type { ConsulConnection } from '../stores/consul-http.js';
import type { EtcdConnection } from '../stores/etcd.js';
import type { TlsFiles, TlsMaterial } from '../stores/tls.js';
import type { MigrationConfig } from './load.js';

/** Connection flags common to every command that talks to a server. */
export interface ConnectionFlags {
  etcdEndpoints?: string;
  consulAddr?: string;
  datacenter?: string;
}

export interface Connections {
  source: EtcdConnection;
  target: ConsulConnection;
  /** Where each setting came from, for `doctor` (never the secret itself). */
  origins: Record<string, 'flag' | 'env' | 'file' | 'default'>;
}

export const DEFAULT_ETCD_ENDPOINT = 'http://127.0.0.1:2379';
export const DEFAULT_CONSUL_ADDRESS = 'http://127.0.0.1:8500';

function readSecretFile(path: string, what: string, baseDir: string): string {
  let text: string;
  try {
    text = readFileSync(resolve(baseDir, path), 'utf8').trim();
  } catch (err) {
    throw new UsageError('secret_file_unreadable', `Cannot read the ${what} file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}.`, {
      hint: `Check the path of the ${what} file and its permissions.`,
    });
  }
  // Empty (a secret not mounted yet): an error, not an anonymous token or an empty password.
  if (text === '') throw new UsageError('secret_file_unreadable', `The ${what} file ${path} is empty.`, { hint: `Put the ${what} in the file (one line), or point at the right file.` });
  return text;
}

function readPem(path: string | undefined, what: string, baseDir: string): Buffer | undefined {
  if (!path) return undefined;
  try {
    return readFileSync(resolve(baseDir, path));
  } catch (err) {
    throw new UsageError('tls_file_unreadable', `Cannot read the ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}.`, {
      hint: `Check the path of the ${what}.`,
    });
  }
}

/**
 * Resolves the connections: flags > environment > file > defaults (DESIGN §4).
 * Environment variables are the ecosystem's own (ETCDCTL_*, CONSUL_*).
 * Every secret found is registered for scrubbing before it is used.
 */
export function resolveConnections(config: MigrationConfig, flags: ConnectionFlags, processEnv: NodeJS.ProcessEnv, baseDir: string, configFile?: string): Connections {
  // A path migration.yaml gives is the file's, as a reviewer reads it: relative to its folder (from another folder,
  // `-c ../migration.yaml` looked for its token file in the working directory). One the environment gives is the shell's.
  const fromFile = (path: string | undefined) => (path && configFile ? resolve(dirname(configFile), path) : path);
  // A variable set but empty (`CONSUL_HTTP_TOKEN=` from a ConfigMap) counts as unset, as etcdctl and consul take it:
  // an empty token must not hide CONSUL_HTTP_TOKEN_FILE and send the requests anonymously.
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(processEnv).filter(([, value]) => value !== ''));
  const origins: Connections['origins'] = {};
  const pick = <T>(name: string, values: [T | undefined, 'flag' | 'env' | 'file'][], fallback: T): T => {
    for (const [value, origin] of values) {
      if (value !== undefined && value !== '') {
        origins[name] = origin;
        return value;
      }
    }
    origins[name] = 'default';
    return fallback;
  };

  // Given but empty (an unset shell variable: --consul-addr "$STAGING"): an error, not the next source in line.
  for (const [flag, value] of [['--consul-addr', flags.consulAddr], ['--datacenter', flags.datacenter]] as const) {
    if (value !== undefined && value.trim() === '') throw new UsageError('flag_invalid', `${flag} was given an empty value.`, { hint: `Give ${flag} a value, or leave the flag out to use the environment or migration.yaml.` });
  }
  const list = (text: string | undefined) => text?.split(',').map((s) => s.trim()).filter(Boolean);
  const flagEndpoints = list(flags.etcdEndpoints);
  // Given but naming no endpoint: an error, not the default (an empty environment variable counts as unset).
  if (flagEndpoints?.length === 0) {
    throw new UsageError('flag_invalid', `--etcd-endpoints "${flags.etcdEndpoints}" names no endpoint.`, { hint: 'Give one or more comma-separated host:port or URLs, for example http://127.0.0.1:2379.' });
  }
  if (config.source.endpoints?.length === 0) {
    throw new UsageError('config_invalid', 'source.endpoints in migration.yaml names no endpoint.', { hint: 'List one or more host:port or URLs, or leave source.endpoints out for ETCDCTL_ENDPOINTS or the default.' });
  }
  const etcdTls = {
    ca: pick<string | undefined>('etcd.cacert', [[env.ETCDCTL_CACERT, 'env'], [fromFile(config.source.tls?.ca), 'file']], undefined),
    cert: pick<string | undefined>('etcd.cert', [[env.ETCDCTL_CERT, 'env'], [fromFile(config.source.tls?.cert), 'file']], undefined),
    key: pick<string | undefined>('etcd.key', [[env.ETCDCTL_KEY, 'env'], [fromFile(config.source.tls?.key), 'file']], undefined),
  };
  const withTls = Boolean(etcdTls.ca || etcdTls.cert || etcdTls.key);
  const envEndpoints = list(env.ETCDCTL_ENDPOINTS);
  // A bare host:port is spoken to as etcdctl does: over TLS when TLS files are set.
  const endpoints = pick<string[]>('etcd.endpoints', [
    [flagEndpoints, 'flag'],
    [envEndpoints?.length ? envEndpoints : undefined, 'env'],
    [config.source.endpoints, 'file'],
  ], [DEFAULT_ETCD_ENDPOINT]).map((e) => etcdEndpoint(e.includes('://') ? e : `${withTls ? 'https' : 'http'}://${e}`, origins['etcd.endpoints']!));

  // etcdctl accepts ETCDCTL_USER as "user" or "user:password".
  let user = pick<string | undefined>('etcd.user', [[env.ETCDCTL_USER, 'env'], [config.source.auth?.user, 'file']], undefined);
  let password: string | undefined;
  if (user?.includes(':') && !env.ETCDCTL_PASSWORD) {
    const at = user.indexOf(':');
    password = user.slice(at + 1);
    user = user.slice(0, at);
  }
  // The file's password is its user's: ETCDCTL_USER naming another user does not get it.
  const fileUser = config.source.auth?.user;
  const filePassword = fileUser === undefined || fileUser === user;
  password ??= env.ETCDCTL_PASSWORD
    ?? (filePassword && config.source.auth?.passwordEnv ? env[config.source.auth.passwordEnv] : undefined)
    ?? (filePassword && config.source.auth?.passwordFile ? readSecretFile(fromFile(config.source.auth.passwordFile)!, 'etcd password', baseDir) : undefined);
  registerSecret(password);
  if (user && password === undefined) {
    const named = filePassword ? config.source.auth?.passwordEnv : undefined;
    const other = filePassword ? '' : ` (migration.yaml's source.auth names the password of user ${fileUser}, not of ETCDCTL_USER's ${user})`;
    throw new UsageError('etcd_password_missing', `An etcd user (${user}) is configured but no password was found${named ? `: ${named} (source.auth.passwordEnv) is not set` : other}.`, {
      hint: named ? `Set ${named} (or ETCDCTL_PASSWORD) in the environment of this command.` : filePassword ? 'Set ETCDCTL_PASSWORD, or source.auth.passwordEnv / passwordFile in migration.yaml.' : 'Set ETCDCTL_PASSWORD (or ETCDCTL_USER=user:password), or unset ETCDCTL_USER to use the file\'s user.',
    });
  }

  const source: EtcdConnection = { endpoints };
  if (withTls) {
    if (!etcdTls.ca) {
      throw new UsageError('etcd_tls_incomplete', 'A client certificate is configured for etcd but no CA certificate.', { hint: 'Set ETCDCTL_CACERT or source.tls.ca as well.' });
    }
    source.tls = tlsFiles(etcdTls, 'etcd', baseDir, 'ETCDCTL_CACERT / ETCDCTL_CERT / ETCDCTL_KEY (or source.tls)');
    const plain = endpoints.filter((e) => e.startsWith('http://'));
    if (plain.length > 0) {
      throw new UsageError('etcd_tls_mismatch', `TLS files are set for etcd (ETCDCTL_CACERT / ETCDCTL_CERT / ETCDCTL_KEY or source.tls), but ${plain.map(redactUrl).join(', ')} names plain http://.`, {
        hint: 'Name a TLS listener with https://, or unset the TLS files for an etcd that listens without TLS.',
      });
    }
  } else if (endpoints.some((e) => e.startsWith('https://'))) {
    throw new UsageError('etcd_tls_incomplete', 'The etcd endpoints use https:// but no CA certificate is configured.', { hint: 'Set ETCDCTL_CACERT or source.tls.ca to the CA that signed the etcd server certificate.' });
  }
  if (user && password !== undefined) source.auth = { username: user, password };

  const https = env.CONSUL_HTTP_SSL === 'true' || env.CONSUL_HTTP_SSL === '1';
  let address = pick<string>('consul.address', [[flags.consulAddr, 'flag'], [env.CONSUL_HTTP_ADDR, 'env'], [config.target.address, 'file']], DEFAULT_CONSUL_ADDRESS);
  if (!address.includes('://')) address = `${https ? 'https' : 'http'}://${address}`;
  const token = env.CONSUL_HTTP_TOKEN
    ?? (env.CONSUL_HTTP_TOKEN_FILE ? readSecretFile(env.CONSUL_HTTP_TOKEN_FILE, 'Consul token', baseDir) : undefined)
    ?? (config.target.tokenEnv ? env[config.target.tokenEnv] : undefined)
    ?? (config.target.tokenFile ? readSecretFile(fromFile(config.target.tokenFile)!, 'Consul token', baseDir) : undefined);
  registerSecret(token);
  // The variable the file names is not set: the run went without a token (anonymous), and failed on ACLs it could not explain.
  const tokenEnv = config.target.tokenEnv;
  if (token === undefined && tokenEnv && env[tokenEnv] === undefined && !config.target.tokenFile) {
    throw new UsageError('consul_token_missing', `migration.yaml names the Consul token's environment variable ${tokenEnv} (target.tokenEnv), which is not set (or is empty).`, {
      hint: `Set ${tokenEnv} (or CONSUL_HTTP_TOKEN) in the environment of this command, or remove target.tokenEnv to use no token.`,
    });
  }
  // A token file of two lines, or a pasted line break: no HTTP header can carry it (the token is not shown).
  if (token && /[^\x20-\x7e]/.test(token)) {
    throw new UsageError('consul_token_invalid', 'The Consul token holds a line break or another character an HTTP header cannot carry.', {
      hint: 'Check CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE (one line: the token) or target.tokenEnv / tokenFile in migration.yaml.',
    });
  }
  origins['consul.token'] = env.CONSUL_HTTP_TOKEN ? 'env' : env.CONSUL_HTTP_TOKEN_FILE ? 'env' : config.target.tokenEnv || config.target.tokenFile ? 'file' : 'default';

  const target: ConsulConnection = { address };
  if (token) target.token = token;
  // Read again when Consul refuses the token (a file rotated in place); a token from the environment stays as it is.
  const tokenFile = env.CONSUL_HTTP_TOKEN ? undefined : env.CONSUL_HTTP_TOKEN_FILE ?? (config.target.tokenEnv && env[config.target.tokenEnv] !== undefined ? undefined : fromFile(config.target.tokenFile));
  if (token && tokenFile) target.tokenFile = resolve(baseDir, tokenFile);
  const datacenter = pick<string | undefined>('consul.datacenter', [[flags.datacenter, 'flag'], [config.target.datacenter, 'file']], undefined);
  if (datacenter) target.datacenter = datacenter;
  const namespace = pick<string | undefined>('consul.namespace', [[env.CONSUL_NAMESPACE, 'env'], [config.target.namespace, 'file']], undefined);
  if (namespace) target.namespace = namespace;
  if (config.target.partition) target.partition = config.target.partition;
  const consulTls = {
    ca: pick<string | undefined>('consul.cacert', [[env.CONSUL_CACERT, 'env'], [fromFile(config.target.tls?.ca), 'file']], undefined),
    cert: pick<string | undefined>('consul.cert', [[env.CONSUL_CLIENT_CERT, 'env'], [fromFile(config.target.tls?.cert), 'file']], undefined),
    key: pick<string | undefined>('consul.key', [[env.CONSUL_CLIENT_KEY, 'env'], [fromFile(config.target.tls?.key), 'file']], undefined),
  };
  const verifyEnv = env.CONSUL_HTTP_SSL_VERIFY;
  const verify = verifyEnv !== undefined ? !/^(false|0)$/i.test(verifyEnv) : config.target.tls?.verify ?? true;
  if (consulTls.ca || consulTls.cert || consulTls.key || !verify) {
    target.tls = { ...tlsFiles(consulTls, 'Consul', baseDir, 'CONSUL_CACERT / CONSUL_CLIENT_CERT / CONSUL_CLIENT_KEY (or target.tls)'), verify };
  }
  return { source, target, origins };
}

/**
 * The TLS files for `server`, read and checked now (an error names what is wrong),
 * and how to read them again when a connection is made later (see {@link TlsMaterial}).
 */
function tlsFiles(paths: { ca?: string; cert?: string; key?: string }, server: string, baseDir: string, settings: string): TlsMaterial {
  const read = (): TlsFiles => {
    const files = {
      ca: readPem(paths.ca, `${server} CA certificate`, baseDir),
      cert: readPem(paths.cert, `${server} client certificate`, baseDir),
      key: readPem(paths.key, `${server} client key`, baseDir),
    };
    checkTlsFiles(files, paths, server, settings);
    return files;
  };
  const reread = (): TlsFiles | undefined => {
    try {
      return read();
    } catch {
      return undefined;
    }
  };
  return { ...read(), reread };
}

/**
 * Certificates and keys that TLS cannot use (not PEM, a certificate and a key
 * that do not belong together) fail here, naming the files, rather than at the
 * first request as an internal error. Their content is never shown.
 */
function checkTlsFiles(tls: { ca?: Buffer; cert?: Buffer; key?: Buffer }, paths: { ca?: string; cert?: string; key?: string }, server: string, settings: string): void {
  // One without the other: grpc-js threw from deep inside (an internal error, exit 70), and Consul's agent dropped the certificate.
  if (Boolean(tls.cert) !== Boolean(tls.key)) {
    throw new UsageError('tls_file_invalid', `A client ${tls.cert ? `certificate (${paths.cert}) is configured for ${server} without its key` : `key (${paths.key}) is configured for ${server} without its certificate`}.`, {
      hint: `Set both the client certificate and its key in ${settings}, or neither.`,
    });
  }
  try {
    // OpenSSL skips a CA file it cannot parse (and then trusts nothing): each of its certificates is parsed here.
    if (tls.ca) {
      const blocks = tls.ca.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
      if (blocks.length === 0) throw new Error('the CA file holds no PEM certificate');
      for (const block of blocks) new X509Certificate(block);
    }
    createSecureContext({ cert: tls.cert, key: tls.key });
  } catch (err) {
    const files = Object.entries(paths).filter(([, path]) => path).map(([what, path]) => `${what} ${path}`).join(', ');
    throw new UsageError('tls_file_invalid', `The TLS files for ${server} (${files}) cannot be used: ${(err as Error).message.split('\n')[0]}.`, {
      hint: `Check ${settings}: PEM files, and a client certificate with the key it was issued for.`,
    });
  }
}

/** Percent-decoded, or as it is when it is not valid percent-encoding. */
function decodedOrSame(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

const ENDPOINT_SOURCES: Record<string, string> = { flag: '--etcd-endpoints', env: 'ETCDCTL_ENDPOINTS', file: 'source.endpoints in migration.yaml', default: 'the default' };

/**
 * An etcd endpoint as the connection takes it, `http(s)://host[:port]` (a port
 * from 1 to 65535): the scheme in lower case, a trailing `/` dropped. grpc-js
 * reports a malformed one only when it dials, as an unreachable server (exit
 * 3) after the retries; it also takes `HTTP://` or a trailing `/` as part of
 * the host name.
 */
function etcdEndpoint(endpoint: string, origin: string): string {
  let url: URL | undefined;
  try {
    url = new URL(endpoint);
  } catch {
    url = undefined;
  }
  if (url && (url.username || url.password)) {
    // etcd takes no credentials in an endpoint (gRPC resolves "user:password@host" as a host name, and quotes it in its errors).
    for (const secret of [url.password, decodedOrSame(url.password), url.username]) registerSecret(secret);
    throw new UsageError('etcd_endpoint_invalid', `The etcd endpoint ${JSON.stringify(redactUrl(endpoint))} (from ${ENDPOINT_SOURCES[origin] ?? origin}) carries a user name or password, which etcd does not take there.`, {
      hint: 'Give the endpoint as http(s)://host:port, and the credentials in ETCDCTL_USER and ETCDCTL_PASSWORD (or source.auth in migration.yaml).',
    });
  }
  const port = url?.port === '' ? undefined : Number(url?.port);
  if (url && (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== '' && (port === undefined || (port >= 1 && port <= 65535)) && url.pathname === '/' && !/[?#]/.test(endpoint)) return `${url.protocol}//${url.host}`;
  throw new UsageError('etcd_endpoint_invalid', `The etcd endpoint ${JSON.stringify(redactUrl(endpoint))} (from ${ENDPOINT_SOURCES[origin] ?? origin}) is not a valid endpoint: it must be http(s)://host:port, with a port from 1 to 65535 and no path.`, {
    hint: 'Give each endpoint as host:port or http(s)://host:port, for example http://127.0.0.1:2379; separate several with commas.',
  });
}
