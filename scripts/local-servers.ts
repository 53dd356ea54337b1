/**
 * Real etcd and Consul servers on loopback for the tests, the demo and the
 * benchmarks (DESIGN §6). etcd comes from Debian's `etcd-server`; Consul is
 * built from its Go module by `scripts/build-consul.sh` and cached per machine.
 * Each server gets free ports and a throwaway data directory, and `stop()`
 * ends exactly the process it started.
 *
 *   tsx scripts/local-servers.ts up      start both, print their addresses, stop on Ctrl-C
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = join(here, '..');

/** The Consul release the project pins (1.21 or newer, DESIGN §4). */
export const CONSUL_VERSION = '1.22.2';
/** A pre-1.14 release (64-op txns), used where it builds with the machine's Go. */
export const CONSUL_LEGACY_VERSION = '1.13.9';

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

const handedOut = new Set<number>();

/**
 * Where servers listen: below the kernel's ephemeral range when it leaves room,
 * so an outgoing connection (of any test, any process) can never take a port
 * between its pick and its server's bind.
 */
const LISTEN_RANGE: readonly [number, number] | undefined = (() => {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return low > 11_000 ? [10_000, low] : undefined;
  } catch {
    return undefined;
  }
})();

function listenOn(port: number): Promise<number | undefined> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' || err.code === 'EACCES' ? resolve(undefined) : reject(err)));
    server.listen(port, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : undefined));
    });
  });
}

export async function freePort(): Promise<number> {
  // The kernel can hand a port just released to the next bind: several ports picked at once (one
  // server's HTTP and Serf ports) could come out equal. Never hand out the same port twice.
  for (;;) {
    const port = await listenOn(LISTEN_RANGE ? LISTEN_RANGE[0] + Math.floor(Math.random() * (LISTEN_RANGE[1] - LISTEN_RANGE[0])) : 0);
    if (port === undefined || handedOut.has(port)) continue;
    handedOut.add(port);
    return port;
  }
}

/** Starts a server again on fresh ports when one it was given got taken before it bound it (another test process). */
async function onFreshPorts<T>(start: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (err) {
      if (attempt >= 3 || !/address already in use/.test(String((err as Error).message))) throw err;
    }
  }
}

/** PEM files for a test PKI: a CA, a server certificate for 127.0.0.1/localhost, a client certificate, and an unrelated CA. */
export interface TlsFiles {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A CA that signed nothing here: a client trusting it must refuse the servers. */
  otherCa: string;
}

/**
 * Generates a throwaway PKI with `openssl` (node:crypto cannot issue X.509).
 * The server certificate carries serverAuth and clientAuth (Consul's agents
 * want both) and the SANs 127.0.0.1, localhost and server.dc1.consul.
 */
export function generateTls(dir = mkdtempSync(join(tmpdir(), 'migrate-tls-'))): TlsFiles {
  const openssl = which('openssl');
  if (!openssl) throw new Error('openssl is not installed: install it with `sudo apt-get install openssl` to run the TLS tests.');
  const run = (args: string[]) => execFileSync(openssl, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const ca = (name: string) => run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.pem`]);
  ca('ca');
  ca('other-ca');
  const leaf = (name: string, ext: string) => {
    writeFileSync(join(dir, `${name}.ext`), ext);
    run(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`]);
    run(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.pem`]);
  };
  leaf('server', 'subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:server.dc1.consul\nextendedKeyUsage = serverAuth, clientAuth\n');
  leaf('client', 'extendedKeyUsage = clientAuth\n');
  const at = (f: string) => join(dir, f);
  return { dir, ca: at('ca.pem'), serverCert: at('server.pem'), serverKey: at('server.key'), clientCert: at('client.pem'), clientKey: at('client.key'), otherCa: at('other-ca.pem') };
}

function which(binary: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/bin', '/usr/local/bin'])) {
    const candidate = join(dir, binary);
    if (dir && existsSync(candidate)) return candidate;
  }
  return undefined;
}

/** The etcd binary: `ETCD_BIN`, else PATH, else Debian's `etcd-server` installed with apt when root. */
export function ensureEtcdBinary(): string {
  if (process.env.ETCD_BIN) return process.env.ETCD_BIN;
  const found = which('etcd');
  if (found) return found;
  if (process.getuid?.() === 0 && which('apt-get')) {
    process.stderr.write('local-servers: etcd is missing; installing Debian\'s etcd-server with apt-get\n');
    execFileSync('sh', ['-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null'], { stdio: ['ignore', 'ignore', 'inherit'] });
    const installed = which('etcd');
    if (installed) return installed;
  }
  throw new Error('etcd is not installed. Install it with `sudo apt-get install etcd-server` (Debian/Ubuntu) or set ETCD_BIN to an etcd binary.');
}

/** The Consul binary: `CONSUL_BIN`, else the cached build of `version` (built once per machine). */
export function ensureConsulBinary(version = CONSUL_VERSION): string {
  if (process.env.CONSUL_BIN) return process.env.CONSUL_BIN;
  const output = execFileSync('bash', [join(here, 'build-consul.sh'), version], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  return output.trim().split('\n').pop()!;
}

async function waitFor(what: string, check: () => Promise<boolean>, child: ChildProcess, log: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${what} exited with code ${child.exitCode} before it was ready; its log (${log}):\n${tail(log)}`);
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} was not ready within ${timeoutMs} ms; its log (${log}):\n${tail(log)}`);
}

function tail(file: string): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-30).join('\n');
  } catch {
    return '(no log)';
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    running.delete(child);
    return;
  }
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
  running.delete(child);
}

function launch(binary: string, args: string[], log: string): ChildProcess {
  const out = createWriteStream(log);
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.pipe(out);
  child.stderr!.pipe(out);
  running.add(child);
  return child;
}

async function httpOk(url: string, headers: Record<string, string> = {}, tls?: TlsFiles): Promise<string | undefined> {
  const { request } = url.startsWith('https:') ? await import('node:https') : await import('node:http');
  const tlsOptions = tls ? { ca: readFileSync(tls.ca), cert: readFileSync(tls.clientCert), key: readFileSync(tls.clientKey) } : {};
  return new Promise((resolve) => {
    const req = request(url, { headers, timeout: 2000, ...tlsOptions }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve(res.statusCode === 200 ? Buffer.concat(chunks).toString('utf8') : undefined));
    });
    req.on('error', () => resolve(undefined));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

export interface EtcdServer {
  endpoint: string;
  pid: number;
  dataDir: string;
  stop(): Promise<void>;
}

export interface EtcdOptions {
  /** etcd's --max-txn-ops (default 1024, so fixtures can hold transactions larger than Consul's). */
  maxTxnOps?: number;
  extraArgs?: string[];
  /** Serve clients over TLS only, requiring a client certificate signed by `tls.ca`. */
  tls?: TlsFiles;
  /** The data directory to use, kept when etcd stops (to start it again, or a copy of it: a restored backup). */
  dataDir?: string;
}

export function startEtcd(options: EtcdOptions = {}): Promise<EtcdServer> {
  return onFreshPorts(() => startEtcdOnce(options));
}

async function startEtcdOnce(options: EtcdOptions): Promise<EtcdServer> {
  const binary = ensureEtcdBinary();
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'migrate-etcd-'));
  const endpoint = `${options.tls ? 'https' : 'http'}://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const log = join(dataDir, 'etcd.log');
  const child = launch(binary, [
    '--name', 'migrate-test',
    '--data-dir', join(dataDir, 'data'),
    '--listen-client-urls', endpoint,
    '--advertise-client-urls', endpoint,
    '--listen-peer-urls', peer,
    '--initial-advertise-peer-urls', peer,
    '--initial-cluster', `migrate-test=${peer}`,
    '--initial-cluster-state', 'new',
    '--max-txn-ops', String(options.maxTxnOps ?? 1024),
    '--max-request-bytes', String(2 * 1024 * 1024),
    '--logger', 'zap',
    ...(options.tls ? ['--cert-file', options.tls.serverCert, '--key-file', options.tls.serverKey, '--trusted-ca-file', options.tls.ca, '--client-cert-auth'] : []),
    ...(options.extraArgs ?? []),
  ], log);
  await waitFor('etcd', async () => (await httpOk(`${endpoint}/health`, {}, options.tls))?.includes('true') ?? false, child, log);
  return {
    endpoint,
    pid: child.pid!,
    dataDir,
    async stop() {
      await stopChild(child);
      if (!options.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export interface ConsulServer {
  address: string;
  version: string;
  pid: number;
  dnsPort: number;
  /** The management token when ACLs are enabled. */
  managementToken?: string;
  dataDir: string;
  stop(): Promise<void>;
}

export interface ConsulOptions {
  version?: string;
  /** Enable ACLs with default_policy deny and a management token. */
  acl?: boolean;
  extraHcl?: string;
  /** Serve the HTTP API over HTTPS only (the plain port disabled), requiring client certificates signed by `tls.ca`. */
  tls?: TlsFiles;
}

/**
 * One Consul server on loopback, datacenter dc1, bootstrapped alone (`-bootstrap-expect 1`), its data in
 * a throwaway directory: the shape of a production server, so figures and behaviour are the ones users meet.
 */
export function startConsul(options: ConsulOptions = {}): Promise<ConsulServer> {
  return onFreshPorts(() => startConsulOnce(options));
}

async function startConsulOnce(options: ConsulOptions): Promise<ConsulServer> {
  const version = options.version ?? process.env.CONSUL_VERSION ?? CONSUL_VERSION;
  const binary = ensureConsulBinary(version);
  const [http, dns, serfLan, serfWan, server] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
  const dataDir = mkdtempSync(join(tmpdir(), 'migrate-consul-'));
  const log = join(dataDir, 'consul.log');
  const node = `migrate-${http}`;
  const [major, minor] = version.split('.').map(Number) as [number, number];
  const modern = major > 1 || minor >= 14;
  const managementToken = options.acl ? randomUUID() : undefined;
  const tls = options.tls;
  const hcl = [
    `ports { ${tls ? `http = -1, https = ${http}` : `http = ${http}`}, dns = ${dns}, serf_lan = ${serfLan}, serf_wan = ${serfWan}, server = ${server}, grpc = -1${modern ? ', grpc_tls = -1' : ''} }`,
    managementToken
      ? `acl { enabled = true, default_policy = "deny", enable_token_persistence = false, tokens { ${minor >= 11 || major > 1 ? 'initial_management' : 'master'} = "${managementToken}" } }`
      : '',
    // The tls stanza exists from 1.12; verify_incoming there covers the HTTPS API too.
    tls ? `tls { defaults { ca_file = "${tls.ca}", cert_file = "${tls.serverCert}", key_file = "${tls.serverKey}", verify_incoming = true } }` : '',
    // Elections at the production timing rather than the default 5x (slow-hardware) one.
    'performance { raft_multiplier = 1 }',
    options.extraHcl ?? '',
  ].filter(Boolean);
  // A server as production runs one, not `-dev`: Raft on disk (a write waits for its fsync) and compact
  // JSON (a dev agent indents every response, which costs it and its clients CPU per key).
  const args = ['agent', '-server', '-bootstrap-expect', '1', '-data-dir', join(dataDir, 'data'), '-node', node, '-bind', '127.0.0.1', '-client', '127.0.0.1', '-log-level', 'warn'];
  const child = launch(binary, [...args, ...hcl.flatMap((h) => ['-hcl', h])], log);
  const address = `${tls ? 'https' : 'http'}://127.0.0.1:${http}`;
  const headers: Record<string, string> = managementToken ? { 'X-Consul-Token': managementToken } : {};
  await waitFor('consul', async () => {
    const leader = await httpOk(`${address}/v1/status/leader`, {}, tls);
    if (!leader || leader.trim() === '""') return false;
    // Sessions need the agent's node in the catalog; the agent registers it just after the election.
    const nodeInfo = await httpOk(`${address}/v1/catalog/node/${node}`, headers, tls);
    return Boolean(nodeInfo && nodeInfo.trim() !== 'null');
  }, child, log);
  return {
    address,
    version,
    pid: child.pid!,
    dnsPort: dns,
    ...(managementToken ? { managementToken } : {}),
    dataDir,
    async stop() {
      await stopChild(child);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** One member of a local cluster: stopped and started again on command, on the same ports and data. */
export interface ClusterMember {
  name: string;
  /** etcd: the client URL; Consul: the HTTP address. */
  address: string;
  /** Consul: the Raft address (`127.0.0.1:<server port>`) that /v1/status/leader names. */
  raftAddress?: string;
  /** Consul: the agent's node name (what a session's `Node` names). */
  node?: string;
  readonly running: boolean;
  /** SIGKILL, no cleanup (a crash). */
  kill(): Promise<void>;
  /** Starts it again after a kill, with the same data directory. */
  restart(): Promise<void>;
}

export interface LocalCluster {
  members: ClusterMember[];
  stop(): Promise<void>;
}

function member(name: string, address: string, binary: string, args: string[], log: string, ready: () => Promise<boolean>, raftAddress?: string, node?: string): ClusterMember & { readonly log: string; start(): ChildProcess; stopNow(): Promise<void> } {
  let child: ChildProcess | undefined;
  let starts = 0;
  let currentLog = log;
  const self = {
    name,
    get log() {
      return currentLog;
    },
    address,
    ...(raftAddress ? { raftAddress } : {}),
    ...(node ? { node } : {}),
    get running() {
      return Boolean(child && child.exitCode === null && child.signalCode === null);
    },
    start() {
      currentLog = `${log}.${starts++}`;
      child = launch(binary, args, currentLog);
      return child;
    },
    async kill() {
      if (!child || !self.running) return;
      const exited = new Promise<void>((resolve) => child!.once('exit', () => resolve()));
      child.kill('SIGKILL');
      await exited;
      running.delete(child);
    },
    async restart() {
      if (self.running) return;
      const started = self.start();
      await waitFor(name, ready, started, currentLog);
    },
    async stopNow() {
      if (child) await stopChild(child);
    },
  };
  return self;
}

/**
 * A three-member etcd cluster on loopback (issue 8, faults). Every member
 * serves clients; `ETCDCTL_ENDPOINTS` lists them all.
 */
export async function startEtcdCluster(size = 3): Promise<LocalCluster & { endpoints: string[] }> {
  const binary = ensureEtcdBinary();
  const dataDir = mkdtempSync(join(tmpdir(), 'migrate-etcd-cluster-'));
  const ports = await Promise.all(Array.from({ length: size }, async () => ({ client: await freePort(), peer: await freePort() })));
  const names = ports.map((_, i) => `m${i}`);
  const initialCluster = ports.map((p, i) => `${names[i]}=http://127.0.0.1:${p.peer}`).join(',');
  const members = ports.map((p, i) => {
    const endpoint = `http://127.0.0.1:${p.client}`;
    const peer = `http://127.0.0.1:${p.peer}`;
    const args = [
      '--name', names[i]!, '--data-dir', join(dataDir, names[i]!),
      '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer,
      '--initial-cluster', initialCluster, '--initial-cluster-state', 'new', '--initial-cluster-token', `migrate-${ports[0]!.client}`,
      '--max-txn-ops', '1024', '--max-request-bytes', String(2 * 1024 * 1024), '--logger', 'zap',
      '--heartbeat-interval', '50', '--election-timeout', '500',
    ];
    return member(names[i]!, endpoint, binary, args, join(dataDir, `${names[i]}.log`), async () => (await httpOk(`${endpoint}/health`))?.includes('true') ?? false);
  });
  const children = members.map((m) => m.start());
  await Promise.all(members.map((m, i) => waitFor(`etcd ${m.name}`, async () => (await httpOk(`${m.address}/health`))?.includes('true') ?? false, children[i]!, m.log)));
  return {
    endpoints: members.map((m) => m.address),
    members,
    async stop() {
      await Promise.all(members.map((m) => m.stopNow()));
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * A three-server Consul cluster on loopback (not dev mode: data directories,
 * `-bootstrap-expect`), with Raft timings at raft_multiplier 1 so an election
 * takes about a second. `leader()` names the member that currently leads.
 */
export async function startConsulCluster(options: { version?: string; size?: number } = {}): Promise<LocalCluster & { version: string; leader(): Promise<ClusterMember | undefined>; healthy(timeoutMs?: number): Promise<void> }> {
  const version = options.version ?? process.env.CONSUL_VERSION ?? CONSUL_VERSION;
  const size = options.size ?? 3;
  const binary = ensureConsulBinary(version);
  const dataDir = mkdtempSync(join(tmpdir(), 'migrate-consul-cluster-'));
  const [major, minor] = version.split('.').map(Number) as [number, number];
  const modern = major > 1 || minor >= 14;
  const ports = await Promise.all(Array.from({ length: size }, async () => ({ http: await freePort(), dns: await freePort(), serfLan: await freePort(), serfWan: await freePort(), server: await freePort() })));
  const members = ports.map((p, i) => {
    const name = `s${i}`;
    const address = `http://127.0.0.1:${p.http}`;
    const joins = ports.filter((_, j) => j !== i).flatMap((q) => ['-retry-join', `127.0.0.1:${q.serfLan}`]);
    const hcl = [
      `ports { http = ${p.http}, dns = ${p.dns}, serf_lan = ${p.serfLan}, serf_wan = ${p.serfWan}, server = ${p.server}, grpc = -1${modern ? ', grpc_tls = -1' : ''} }`,
      'performance { raft_multiplier = 1 }',
      // A server that comes back is a voter again after this long (default 10 s); until then a second death loses quorum.
      'autopilot { server_stabilization_time = "1s" }',
      'leave_on_terminate = false',
    ];
    const args = ['agent', '-server', '-bootstrap-expect', String(size), '-data-dir', join(dataDir, name), '-node', `${name}-${p.http}`, '-bind', '127.0.0.1', '-client', '127.0.0.1', '-log-level', 'warn', ...joins, ...hcl.flatMap((h) => ['-hcl', h])];
    const ready = async () => {
      const leader = await httpOk(`${address}/v1/status/leader`);
      if (!leader || leader.trim() === '""') return false;
      // Sessions need this agent's node in the catalog.
      const nodeInfo = await httpOk(`${address}/v1/catalog/node/${name}-${p.http}`);
      return Boolean(nodeInfo && nodeInfo.trim() !== 'null');
    };
    return member(name, address, binary, args, join(dataDir, `${name}.log`), ready, `127.0.0.1:${p.server}`, `${name}-${p.http}`);
  });
  const children = members.map((m) => m.start());
  await Promise.all(members.map((m, i) => waitFor(`consul ${m.name}`, async () => {
    const leader = await httpOk(`${m.address}/v1/status/leader`);
    if (!leader || leader.trim() === '""') return false;
    const nodeInfo = await httpOk(`${m.address}/v1/catalog/node/${m.name}-${new URL(m.address).port}`);
    return Boolean(nodeInfo && nodeInfo.trim() !== 'null');
  }, children[i]!, m.log, 90_000)));
  return {
    version,
    members,
    /** Waits until autopilot reports every server healthy and voting, so the cluster survives losing one. */
    async healthy(timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        for (const m of members.filter((x) => x.running)) {
          const text = await httpOk(`${m.address}/v1/operator/autopilot/health`);
          const health = text ? (JSON.parse(text) as { Healthy: boolean; Servers: { Healthy: boolean; Voter: boolean }[] | null }) : undefined;
          if (health?.Healthy && health.Servers?.length === size && health.Servers.every((x) => x.Healthy && x.Voter)) return;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      throw new Error(`the Consul cluster was not healthy with ${size} voters within ${timeoutMs} ms`);
    },
    async leader() {
      for (const m of members) {
        if (!m.running) continue;
        const leader = await httpOk(`${m.address}/v1/status/leader`);
        const raft = leader ? (JSON.parse(leader) as string) : '';
        const found = members.find((x) => x.raftAddress === raft);
        if (found?.running) return found;
      }
      return undefined;
    },
    async stop() {
      await Promise.all(members.map((m) => m.stopNow()));
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** The status and body of a GET (undefined when nothing answered within 2 s). */
async function httpGet(url: string): Promise<{ status: number; body: string } | undefined> {
  const { request } = await import('node:http');
  return new Promise((resolve) => {
    const req = request(url, { timeout: 2000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', () => resolve(undefined));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

/**
 * Consul datacenters federated over the WAN on loopback: one server per
 * datacenter (default dc1 and dc2), each its own single-server datacenter (not
 * dev mode: a data directory, `-bootstrap-expect 1`, so a member killed and
 * restarted keeps its KV data and sessions). Every server retries a WAN join
 * to every other one (`-retry-join-wan`, every second), so either side of a
 * broken link can rejoin. `members[i]` is the server of `datacenters[i]`,
 * named after it. `federated()` waits until the first datacenter lists every
 * datacenter and routes a `?dc=` request to each of the others; it has
 * returned once before this resolves, and after a member comes back the
 * caller calls it again.
 */
export async function startConsulFederation(options: { version?: string; datacenters?: string[] } = {}): Promise<LocalCluster & { version: string; datacenters: string[]; member(dc: string): ClusterMember; federated(timeoutMs?: number): Promise<void> }> {
  const version = options.version ?? process.env.CONSUL_VERSION ?? CONSUL_VERSION;
  const datacenters = [...(options.datacenters ?? ['dc1', 'dc2'])];
  if (datacenters.length === 0 || new Set(datacenters).size !== datacenters.length) throw new Error(`startConsulFederation: datacenter names must be distinct and at least one (got ${JSON.stringify(datacenters)})`);
  const binary = ensureConsulBinary(version);
  const dataDir = mkdtempSync(join(tmpdir(), 'migrate-consul-federation-'));
  const [major, minor] = version.split('.').map(Number) as [number, number];
  const modern = major > 1 || minor >= 14;
  const ports = await Promise.all(datacenters.map(async () => ({ http: await freePort(), dns: await freePort(), serfLan: await freePort(), serfWan: await freePort(), server: await freePort() })));
  const members = ports.map((p, i) => {
    const dc = datacenters[i]!;
    const node = `${dc}-${p.http}`;
    const address = `http://127.0.0.1:${p.http}`;
    const wanJoins = ports.filter((_, j) => j !== i).flatMap((q) => ['-retry-join-wan', `127.0.0.1:${q.serfWan}`]);
    const hcl = [
      `ports { http = ${p.http}, dns = ${p.dns}, serf_lan = ${p.serfLan}, serf_wan = ${p.serfWan}, server = ${p.server}, grpc = -1${modern ? ', grpc_tls = -1' : ''} }`,
      'performance { raft_multiplier = 1 }',
      'leave_on_terminate = false',
    ];
    const args = [
      'agent', '-server', '-bootstrap-expect', '1', '-datacenter', dc, '-data-dir', join(dataDir, dc), '-node', node,
      '-bind', '127.0.0.1', '-client', '127.0.0.1', '-log-level', 'warn',
      // The default WAN retry interval is 30 s; a restarted member should find the others at once.
      ...wanJoins, '-retry-interval-wan', '1s',
      ...hcl.flatMap((h) => ['-hcl', h]),
    ];
    const ready = async () => {
      const leader = await httpOk(`${address}/v1/status/leader`);
      if (!leader || leader.trim() === '""') return false;
      // Sessions need this agent's node in its datacenter's catalog.
      const nodeInfo = await httpOk(`${address}/v1/catalog/node/${node}`);
      return Boolean(nodeInfo && nodeInfo.trim() !== 'null');
    };
    return { m: member(dc, address, binary, args, join(dataDir, `${dc}.log`), ready, `127.0.0.1:${p.server}`, node), ready };
  });
  const first = members[0]!.m;
  const federation = {
    version,
    datacenters,
    members: members.map((x) => x.m) as ClusterMember[],
    member(dc: string): ClusterMember {
      const found = members[datacenters.indexOf(dc)]?.m;
      if (!found) throw new Error(`no datacenter ${dc} in this federation (${datacenters.join(', ')})`);
      return found;
    },
    async federated(timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      let last = '';
      while (Date.now() < deadline) {
        const listed = await httpOk(`${first.address}/v1/catalog/datacenters`);
        const known = listed ? (JSON.parse(listed) as string[]) : [];
        if (datacenters.every((dc) => known.includes(dc))) {
          const routes = await Promise.all(datacenters.slice(1).map(async (dc) => ({ dc, answer: await httpGet(`${first.address}/v1/kv/migrate-federation-probe/missing?dc=${encodeURIComponent(dc)}`) })));
          const broken = routes.filter((r) => r.answer?.status !== 404);
          if (broken.length === 0) return;
          last = broken.map((r) => `?dc=${r.dc}: ${r.answer ? `${r.answer.status} ${r.answer.body.trim().slice(0, 200)}` : 'no answer'}`).join('; ');
        } else {
          last = `${first.name} lists ${JSON.stringify(known)}`;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      throw new Error(`the Consul datacenters ${datacenters.join(', ')} were not federated within ${timeoutMs} ms (last: ${last}); ${first.name}'s log (${first.log}):\n${tail(first.log)}`);
    },
    async stop() {
      await Promise.all(members.map((x) => x.m.stopNow()));
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  try {
    const children = members.map((x) => x.m.start());
    await Promise.all(members.map((x, i) => waitFor(`consul ${x.m.name}`, x.ready, children[i]!, x.m.log, 90_000)));
    await federation.federated(90_000);
  } catch (err) {
    await federation.stop();
    throw err;
  }
  return federation;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [command] = process.argv.slice(2);
  if (command !== 'up') {
    process.stderr.write('usage: tsx scripts/local-servers.ts up\n');
    process.exit(2);
  }
  const etcd = await startEtcd();
  const consul = await startConsul();
  process.stdout.write(`export ETCDCTL_ENDPOINTS=${etcd.endpoint}\nexport CONSUL_HTTP_ADDR=${consul.address}\n# etcd pid ${etcd.pid}, Consul ${consul.version} pid ${consul.pid}; Ctrl-C stops both\n`);
  const stop = async () => {
    await Promise.all([etcd.stop(), consul.stop()]);
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
