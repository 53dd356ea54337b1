import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { scrub } from '../report/redact.js';
import { resolveConnections } from './connections.js';
import { generateTls } from '../../scripts/local-servers.js';
import { parseConfig } from './load.js';

const dir = mkdtempSync(join(tmpdir(), 'migrate-conn-'));
const fileConfig = parseConfig(`version: 1
id: demo
source:
  endpoints: [http://file-etcd:2379]
  auth: { user: migrator, passwordEnv: MY_ETCD_PW }
target:
  address: http://file-consul:8500
  datacenter: dc-file
  tokenFile: token.txt
`, 'm.yaml').config;
writeFileSync(join(dir, 'token.txt'), 'file-token-0001\n');

describe('connection settings: flags > environment > file > defaults', () => {
  it('uses the file when nothing overrides it, reading secrets from the env and files it names', () => {
    const c = resolveConnections(fileConfig, {}, { MY_ETCD_PW: 'pw-from-env-var' }, dir);
    expect(c.source.endpoints).toEqual(['http://file-etcd:2379']);
    expect(c.source.auth).toEqual({ username: 'migrator', password: 'pw-from-env-var' });
    expect(c.target).toMatchObject({ address: 'http://file-consul:8500', datacenter: 'dc-file', token: 'file-token-0001' });
    expect(c.origins['etcd.endpoints']).toBe('file');
    expect(c.origins['consul.token']).toBe('file');
  });

  it('the ecosystem\'s environment variables override the file', () => {
    const c = resolveConnections(fileConfig, {}, { ETCDCTL_ENDPOINTS: 'env-etcd:2379,env-etcd2:2379', CONSUL_HTTP_ADDR: 'env-consul:8500', CONSUL_HTTP_TOKEN: 'env-token-0002', ETCDCTL_USER: 'root:rootpw-0003' }, dir);
    expect(c.source.endpoints).toEqual(['http://env-etcd:2379', 'http://env-etcd2:2379']);
    expect(c.target.address).toBe('http://env-consul:8500');
    expect(c.target.token).toBe('env-token-0002');
    expect(c.source.auth).toEqual({ username: 'root', password: 'rootpw-0003' });
    expect(c.origins['consul.address']).toBe('env');
  });

  it('ETCDCTL_USER naming another user than the file\'s does not get the file\'s password: refused, saying whose it is', () => {
    expect(() => resolveConnections(fileConfig, {}, { ETCDCTL_USER: 'someone-else', MY_ETCD_PW: 'migrators-pw-0006' }, dir)).toThrow(expect.objectContaining({
      code: 'etcd_password_missing',
      message: expect.stringContaining("migration.yaml's source.auth names the password of user migrator, not of ETCDCTL_USER's someone-else"),
    }));
    // The file's own user, named again in the environment, keeps it; a file with a password and no user lends it to ETCDCTL_USER.
    expect(resolveConnections(fileConfig, {}, { ETCDCTL_USER: 'migrator', MY_ETCD_PW: 'migrators-pw-0006' }, dir).source.auth).toEqual({ username: 'migrator', password: 'migrators-pw-0006' });
    const noUser = parseConfig('version: 1\nid: d\nsource:\n  auth: { passwordEnv: MY_ETCD_PW }\n', 'm.yaml').config;
    expect(resolveConnections(noUser, {}, { ETCDCTL_USER: 'ops', MY_ETCD_PW: 'ops-pw-0007' }, dir).source.auth).toEqual({ username: 'ops', password: 'ops-pw-0007' });
  });

  it('flags override the environment', () => {
    const c = resolveConnections(fileConfig, { etcdEndpoints: 'http://flag-etcd:1', consulAddr: 'http://flag-consul:2', datacenter: 'dc-flag' }, { ETCDCTL_ENDPOINTS: 'env:1', CONSUL_HTTP_ADDR: 'env:2', MY_ETCD_PW: 'x-pw-0004' }, dir);
    expect(c.source.endpoints).toEqual(['http://flag-etcd:1']);
    expect(c.target.address).toBe('http://flag-consul:2');
    expect(c.target.datacenter).toBe('dc-flag');
    expect(c.origins['consul.address']).toBe('flag');
  });

  it('paths migration.yaml gives are relative to its folder; paths the environment gives, to the working directory', () => {
    const elsewhere = mkdtempSync(join(tmpdir(), 'migrate-cwd-'));
    writeFileSync(join(elsewhere, 'token.txt'), 'cwd-token-0011\n');
    // Run from another folder (`-c ../migration.yaml`): the file's token.txt, not the working directory's.
    expect(resolveConnections(fileConfig, {}, { MY_ETCD_PW: 'p' }, elsewhere, join(dir, 'migration.yaml')).target.token).toBe('file-token-0001');
    expect(resolveConnections(fileConfig, {}, { MY_ETCD_PW: 'p', CONSUL_HTTP_TOKEN_FILE: 'token.txt' }, elsewhere, join(dir, 'migration.yaml')).target.token).toBe('cwd-token-0011');
    // The path it could not read is said whole.
    expect(() => resolveConnections(fileConfig, {}, { MY_ETCD_PW: 'p' }, dir, join(elsewhere, 'sub', 'migration.yaml'))).toThrow(`Cannot read the Consul token file ${join(elsewhere, 'sub', 'token.txt')}: ENOENT.`);
  });

  it('defaults to the local servers', () => {
    const c = resolveConnections(parseConfig('version: 1\nid: d\n', 'm.yaml').config, {}, {}, dir);
    expect(c.source.endpoints).toEqual(['http://127.0.0.1:2379']);
    expect(c.target.address).toBe('http://127.0.0.1:8500');
    expect(c.target.token).toBeUndefined();
    expect(c.origins['etcd.endpoints']).toBe('default');
  });

  it('target.tokenEnv naming an unset variable is refused, not taken for no token (the run went anonymous)', () => {
    const config = parseConfig('version: 1\nid: d\ntarget:\n  tokenEnv: MY_CONSUL_TOKEN\n', 'm.yaml').config;
    expect(() => resolveConnections(config, {}, {}, dir)).toThrow(expect.objectContaining({ code: 'consul_token_missing', message: 'migration.yaml names the Consul token\'s environment variable MY_CONSUL_TOKEN (target.tokenEnv), which is not set (or is empty).' }));
    expect(resolveConnections(config, {}, { MY_CONSUL_TOKEN: 'env-named-token-0009' }, dir).target.token).toBe('env-named-token-0009');
    expect(resolveConnections(config, {}, { CONSUL_HTTP_TOKEN: 'env-token-0010' }, dir).target.token).toBe('env-token-0010');
  });

  it('CONSUL_HTTP_TOKEN_FILE is read; CONSUL_HTTP_SSL_VERIFY=false turns verification off', () => {
    writeFileSync(join(dir, 'env-token.txt'), 'env-file-token-0005');
    const c = resolveConnections(parseConfig('version: 1\nid: d\n', 'm.yaml').config, {}, { CONSUL_HTTP_TOKEN_FILE: join(dir, 'env-token.txt'), CONSUL_HTTP_SSL_VERIFY: 'false', CONSUL_HTTP_ADDR: 'https://c:8501' }, dir);
    expect(c.target.token).toBe('env-file-token-0005');
    expect(c.target.tls?.verify).toBe(false);
  });

  it('an empty CONSUL_HTTP_TOKEN counts as unset: CONSUL_HTTP_TOKEN_FILE is read (and a missing one is an error), not an anonymous request', () => {
    writeFileSync(join(dir, 'env-token.txt'), 'env-file-token-0006');
    const c = resolveConnections(parseConfig('version: 1\nid: d\n', 'm.yaml').config, {}, { CONSUL_HTTP_TOKEN: '', CONSUL_HTTP_TOKEN_FILE: join(dir, 'env-token.txt') }, dir);
    expect(c.target.token).toBe('env-file-token-0006');
    expect(c.origins['consul.token']).toBe('env');
    expect(() => resolveConnections(parseConfig('version: 1\nid: d\n', 'm.yaml').config, {}, { CONSUL_HTTP_TOKEN: '', CONSUL_HTTP_TOKEN_FILE: '/nonexistent/token' }, dir)).toThrow(/Cannot read the Consul token file/);
    // An empty token file (a secret not mounted yet) is an error, not the anonymous token.
    writeFileSync(join(dir, 'empty-token.txt'), '\n');
    expect(() => resolveConnections(parseConfig('version: 1\nid: d\n', 'm.yaml').config, {}, { CONSUL_HTTP_TOKEN_FILE: join(dir, 'empty-token.txt') }, dir)).toThrow(/The Consul token file .*empty-token\.txt is empty/);
  });

  it('registers every secret it resolves so no output can carry it', () => {
    resolveConnections(fileConfig, {}, { MY_ETCD_PW: 'canary-password-9f8e', CONSUL_HTTP_TOKEN: 'canary-token-7d6c' }, dir);
    expect(scrub('token canary-token-7d6c and password canary-password-9f8e')).toBe('token [redacted] and password [redacted]');
  });

  it('a user without a password, an unreadable token file, or https without a CA are usage errors', () => {
    const noPassword = parseConfig('version: 1\nid: d\nsource:\n  auth: { user: u }\n', 'm.yaml').config;
    expect(() => resolveConnections(noPassword, {}, {}, dir)).toThrow(/no password was found/);
    // The variable migration.yaml names is the one to set.
    const named = parseConfig('version: 1\nid: d\nsource:\n  auth: { user: root, passwordEnv: MY_ETCD_PW }\n', 'm.yaml').config;
    expect(() => resolveConnections(named, {}, {}, dir)).toThrow(expect.objectContaining({ code: 'etcd_password_missing', message: 'An etcd user (root) is configured but no password was found: MY_ETCD_PW (source.auth.passwordEnv) is not set.', hint: 'Set MY_ETCD_PW (or ETCDCTL_PASSWORD) in the environment of this command.' }));
    expect(() => resolveConnections(fileConfig, {}, { CONSUL_HTTP_TOKEN_FILE: '/nonexistent/token', MY_ETCD_PW: 'p' }, dir)).toThrow(/Cannot read the Consul token file/);
    expect(() => resolveConnections(fileConfig, {}, { ETCDCTL_ENDPOINTS: 'https://e:2379', MY_ETCD_PW: 'p' }, dir)).toThrow(/https:\/\/ but no CA certificate/);
  });

  it('an empty --consul-addr or --datacenter is a usage error, not the next setting in line (an unset shell variable)', () => {
    for (const flags of [{ consulAddr: '' }, { consulAddr: ' ' }, { datacenter: '' }]) {
      expect(() => resolveConnections(fileConfig, flags, { MY_ETCD_PW: 'p', CONSUL_HTTP_ADDR: 'http://env-consul:8500' }, dir)).toThrow(expect.objectContaining({ code: 'flag_invalid', exitCode: 2, message: expect.stringMatching(/^--(consul-addr|datacenter) was given an empty value/) }));
    }
  });

  it('a Consul token no HTTP header can carry (two lines) is a usage error that does not show it', () => {
    writeFileSync(join(dir, 'two-lines.txt'), 'tok-line-one\ntok-line-two\n');
    for (const env of [{ CONSUL_HTTP_TOKEN: 'tok-line-one\ntok-line-two' }, { CONSUL_HTTP_TOKEN_FILE: join(dir, 'two-lines.txt') }]) {
      const error = (() => {
        try {
          resolveConnections(fileConfig, {}, { MY_ETCD_PW: 'p', ...env }, dir);
        } catch (err) {
          return err as Error & { code: string };
        }
        throw new Error('no error');
      })();
      expect(error.code).toBe('consul_token_invalid');
      expect(error.message).not.toContain('tok-line');
    }
  });

  it('TLS files TLS cannot use (not PEM; a certificate and a key that do not belong together) are a usage error naming them, not their content', () => {
    const tls = generateTls();
    writeFileSync(join(dir, 'garbage.pem'), '-----BEGIN CERTIFICATE-----\nSECRETGARBAGE\n-----END CERTIFICATE-----\n');
    const cases: [string, NodeJS.ProcessEnv][] = [
      ['a CA that is not PEM', { CONSUL_CACERT: join(dir, 'garbage.pem') }],
      ['a certificate with another key', { CONSUL_CACERT: tls.ca, CONSUL_CLIENT_CERT: tls.clientCert, CONSUL_CLIENT_KEY: tls.serverKey }],
      ['etcd: a certificate with another key', { ETCDCTL_CACERT: tls.ca, ETCDCTL_CERT: tls.clientCert, ETCDCTL_KEY: tls.serverKey }],
      // One without the other: grpc-js threw an internal error (exit 70); Consul's agent dropped the certificate.
      ['etcd: a certificate without its key', { ETCDCTL_CACERT: tls.ca, ETCDCTL_CERT: tls.clientCert }],
      ['etcd: a key without its certificate', { ETCDCTL_CACERT: tls.ca, ETCDCTL_KEY: tls.clientKey }],
      ['a certificate without its key', { CONSUL_CACERT: tls.ca, CONSUL_CLIENT_CERT: tls.clientCert }],
      ['a key without its certificate', { CONSUL_CLIENT_KEY: tls.clientKey }],
    ];
    for (const [what, env] of cases) {
      expect(() => resolveConnections(fileConfig, {}, { MY_ETCD_PW: 'p', ...env }, dir), what).toThrow(expect.objectContaining({ code: 'tls_file_invalid', exitCode: 2, message: expect.not.stringContaining('SECRETGARBAGE') }));
    }
    // The files that belong together pass.
    expect(resolveConnections(fileConfig, {}, { MY_ETCD_PW: 'p', CONSUL_CACERT: tls.ca, CONSUL_CLIENT_CERT: tls.clientCert, CONSUL_CLIENT_KEY: tls.clientKey }, dir).target.tls?.cert).toBeDefined();
  });

  it('etcd TLS files with an http:// endpoint are a usage error (it was spoken to over TLS all the same); a bare host:port is then https://, as etcdctl speaks to it', () => {
    const tls = generateTls();
    const files = { ETCDCTL_CACERT: tls.ca, ETCDCTL_CERT: tls.clientCert, ETCDCTL_KEY: tls.clientKey, MY_ETCD_PW: 'p' };
    expect(() => resolveConnections(fileConfig, {}, { ...files, ETCDCTL_ENDPOINTS: 'https://e1:2379,http://e2:2379' }, dir)).toThrow(expect.objectContaining({ code: 'etcd_tls_mismatch', exitCode: 2, message: expect.stringContaining('http://e2:2379 names plain http://') }));
    expect(resolveConnections(fileConfig, {}, { ...files, ETCDCTL_ENDPOINTS: 'e1:2379' }, dir).source.endpoints).toEqual(['https://e1:2379']);
    expect(resolveConnections(fileConfig, {}, { MY_ETCD_PW: 'p', ETCDCTL_ENDPOINTS: 'e1:2379' }, dir).source.endpoints).toEqual(['http://e1:2379']);
  });

  it('the TLS files are read again for each new connection: a renewed certificate is used, a half-written one is not', () => {
    const tls = generateTls();
    const cert = join(dir, 'renewed.pem');
    const key = join(dir, 'renewed.key');
    writeFileSync(cert, readFileSync(tls.clientCert));
    writeFileSync(key, readFileSync(tls.clientKey));
    const c = resolveConnections(fileConfig, {}, { MY_ETCD_PW: 'p', CONSUL_CACERT: tls.ca, CONSUL_CLIENT_CERT: cert, CONSUL_CLIENT_KEY: key }, dir);
    expect(c.target.tls!.reread!()!.cert).toEqual(readFileSync(tls.clientCert));
    // Renewed in place (here: the server's pair, which belong together as well).
    writeFileSync(cert, readFileSync(tls.serverCert));
    writeFileSync(key, readFileSync(tls.serverKey));
    expect(c.target.tls!.reread!()!.cert).toEqual(readFileSync(tls.serverCert));
    // Half written: a certificate without its key is not used.
    writeFileSync(key, readFileSync(tls.clientKey));
    expect(c.target.tls!.reread!()).toBeUndefined();
  });

  it('endpoints that name nothing: a flag or the file is a usage error (it was an internal error), an empty environment variable is unset', () => {
    const bare = parseConfig('version: 1\nid: d\n', 'm.yaml').config;
    for (const etcdEndpoints of ['', ',', ' , ']) {
      expect(() => resolveConnections(bare, { etcdEndpoints }, {}, dir)).toThrow(expect.objectContaining({ code: 'flag_invalid', exitCode: 2, message: expect.stringContaining('names no endpoint') }));
    }
    const emptyList = parseConfig('version: 1\nid: d\nsource:\n  endpoints: []\n', 'm.yaml').config;
    expect(() => resolveConnections(emptyList, {}, {}, dir)).toThrow(expect.objectContaining({ code: 'config_invalid', exitCode: 2 }));
    for (const ETCDCTL_ENDPOINTS of ['', ' ', ',']) {
      const c = resolveConnections(bare, {}, { ETCDCTL_ENDPOINTS }, dir);
      expect(c.source.endpoints).toEqual(['http://127.0.0.1:2379']);
      expect(c.origins['etcd.endpoints']).toBe('default');
    }
  });

  it('an etcd endpoint that is not http(s)://host:port is a usage error naming where it came from (it was reported as unreachable, exit 3)', () => {
    const bare = parseConfig('version: 1\nid: d\n', 'm.yaml').config;
    for (const etcdEndpoints of ['127.0.0.1:99999', 'http://127.0.0.1:0', '127.0.0.1:abc', 'ftp://127.0.0.1:2379', 'http://127.0.0.1:2379,http://[::1', 'http://user:pw@:2379', 'http://127.0.0.1:2379/v3', 'http://127.0.0.1:2379/?x=1', 'http://127.0.0.1:2379#a']) {
      expect(() => resolveConnections(bare, { etcdEndpoints }, {}, dir)).toThrow(expect.objectContaining({ code: 'etcd_endpoint_invalid', exitCode: 2, message: expect.stringContaining('from --etcd-endpoints') }));
    }
    expect(() => resolveConnections(bare, {}, { ETCDCTL_ENDPOINTS: 'etcd-1:2379x' }, dir)).toThrow(/"http:\/\/etcd-1:2379x" \(from ETCDCTL_ENDPOINTS\)/);
    const inFile = parseConfig('version: 1\nid: d\nsource:\n  endpoints: [ "http://e:123456" ]\n', 'm.yaml').config;
    expect(() => resolveConnections(inFile, {}, {}, dir)).toThrow(/from source\.endpoints in migration\.yaml/);
    // Credentials in an endpoint: refused (etcd takes none there), never in the message, and scrubbed from any other output.
    for (const etcdEndpoints of ['http://root:s3cret-77@e:2379', 'http://root:s3cret-77@e:99999', 'http://root:s3cret-77%zz@e:2379']) {
      expect(() => resolveConnections(bare, { etcdEndpoints }, {}, dir)).toThrow(expect.objectContaining({ code: 'etcd_endpoint_invalid', message: expect.not.stringContaining('s3cret-77') }));
    }
    expect(scrub('dns:root:s3cret-77@e:2379')).not.toContain('s3cret-77');
    for (const ok of ['e:2379', 'http://10.0.0.1:2379', 'http://[::1]:2379', 'http://etcd.example.com']) {
      expect(resolveConnections(bare, { etcdEndpoints: ok }, {}, dir).source.endpoints[0]).toMatch(/^https?:\/\//);
    }
    // What grpc-js would take as part of the host name ("Failed to parse DNS address", exit 3) is written the one way it reads.
    expect(resolveConnections(bare, { etcdEndpoints: 'HTTP://10.0.0.1:2379/,Http://E.example:2379' }, {}, dir).source.endpoints).toEqual(['http://10.0.0.1:2379', 'http://e.example:2379']);
  });
});
