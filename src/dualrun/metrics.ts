import http from 'node:http';
import { Counter, Gauge, Registry } from 'prom-client';
import { UsageError } from '../errors.js';
import type { DatacenterStats, DualRunStats } from './dualrun.js';
import { HEARTBEAT_MS } from './heartbeat.js';

/** A reverse mirror failing this long (ms) makes a leader not ready. */
const MIRROR_FAILING_MS = 10_000;
/** A standby asks Consul about every second: silent this long, it is not ready to lead. */
export const STANDBY_SILENT_MS = 10_000;
import { heartbeatLagSeconds } from './lag-heartbeat.js';

/**
 * Lag in seconds: with `--heartbeat-key`, the end-to-end lag the heartbeat
 * measures (from the put in etcd to the checkpoint past it committed in
 * Consul); without it, or before the first heartbeat, the time since the
 * checkpoint last equalled etcd's current revision.
 */
export function lagSeconds(stats: DualRunStats, now: number): number {
  const heartbeat = heartbeatLagSeconds(stats.heartbeat, now);
  if (heartbeat !== undefined) return heartbeat;
  const applied = stats.checkpoint >= stats.etcdRevision ? 0 : (now - stats.caughtUpAt) / 1000;
  // What the watch heard and the applier has not taken (a frozen Consul holds the applier): waiting since then.
  const queued = stats.behindSince === undefined ? 0 : (now - stats.behindSince) / 1000;
  // With several datacenters, the one furthest behind (one down for a minute: the figures said 0).
  const datacenters = Object.values(stats.datacenters ?? {}).map((d) => datacenterLagSeconds(stats, d, now));
  return Math.max(applied, queued, ...datacenters);
}

/** One datacenter's lag in revisions: up to the latest revision the dual-run heard, whichever lane heard it. */
export function datacenterLag(stats: DualRunStats, d: DatacenterStats): number {
  return Math.max(0, heardRevision(stats) - d.checkpoint);
}

/** One datacenter's lag in seconds: since its checkpoint last reached etcd's revision, while it is behind. */
function datacenterLagSeconds(stats: DualRunStats, d: DatacenterStats, now: number): number {
  return datacenterLag(stats, d) === 0 ? 0 : (now - d.caughtUpAt) / 1000;
}

/** etcd's latest revision as the dual-run knows it: from the events it took, or what the watch heard beyond them. */
export function heardRevision(stats: Pick<DualRunStats, 'etcdRevision' | 'seenRevision'>): number {
  return Math.max(stats.etcdRevision, stats.seenRevision);
}

/** etcd revisions not yet applied to Consul: up to the latest the watch heard, taken by the applier or not. */
export function lagRevisions(stats: DualRunStats): number {
  return Math.max(0, heardRevision(stats) - stats.checkpoint, ...Object.values(stats.datacenters ?? {}).map((d) => datacenterLag(stats, d)));
}

/**
 * The dual-run's Prometheus endpoint (`/metrics`) and readiness (`/healthz`:
 * 200 when leading, connected and caught up, or a standby Consul answers; 503
 * while catching up, disconnected, or stalled: no checkpoint written for twice
 * the heartbeat). A standby's lag is 0: it replicates nothing.
 */
/** The lag a process reports: its own while it leads, 0 otherwise (a former leader's would grow for ever). */
function leadingLagSeconds(stats: DualRunStats, now: number): number {
  return stats.role === 'leader' ? lagSeconds(stats, now) : 0;
}

export class DualRunMetrics {
  readonly registry = new Registry();
  private stats: DualRunStats | undefined;
  private readonly lagRevisions = new Gauge({
    name: 'migrate_dualrun_lag_revisions',
    help: 'etcd revisions not yet applied to Consul (0 when not leading: a standby replicates nothing)',
    registers: [this.registry],
    // At scrape time, from the same figures as the lag in seconds (a scrape showed 0 revisions beside 148 s).
    collect: () => {
      if (this.stats) this.lagRevisions.set(this.stats.role === 'leader' ? lagRevisions(this.stats) : 0);
    },
  });
  private readonly lagSeconds = new Gauge({
    name: 'migrate_dualrun_lag_seconds',
    help: 'replication lag in seconds: with --heartbeat-key the heartbeat\'s end-to-end lag (migrate_dualrun_heartbeat_lag_seconds), else the time since the checkpoint last equalled etcd\'s current revision',
    registers: [this.registry],
    // Computed at scrape time: a stalled dual-run publishes nothing, and its lag must still grow.
    collect: () => {
      if (this.stats) this.lagSeconds.set(leadingLagSeconds(this.stats, Date.now()));
    },
  });
  private readonly checkpointAge = new Gauge({
    name: 'migrate_dualrun_checkpoint_age_seconds',
    help: 'seconds since the leader last wrote its checkpoint (at least every 10 s while it runs; over 20 s: etcd or Consul does not answer, /healthz says stalled); 0 when not leading',
    registers: [this.registry],
    // At scrape time: a frozen etcd makes no news, so nothing else would move it.
    collect: () => {
      if (this.stats) this.checkpointAge.set(this.stats.role === 'leader' ? Math.max(0, (Date.now() - this.stats.checkpointWrittenAt) / 1000) : 0);
    },
  });
  private heartbeatLag: Gauge | undefined;
  private readonly checkpoint = new Gauge({ name: 'migrate_dualrun_checkpoint_revision', help: 'last etcd revision fully applied to Consul', registers: [this.registry] });
  private readonly etcdRevision = new Gauge({ name: 'migrate_dualrun_etcd_revision', help: 'latest etcd revision seen', registers: [this.registry] });
  private readonly leader = new Gauge({ name: 'migrate_dualrun_leader', help: '1 while this process leads the dual-run', registers: [this.registry] });
  private readonly sessions = new Gauge({ name: 'migrate_dualrun_sessions', help: 'Consul sessions mirroring etcd leases', registers: [this.registry] });
  private readonly reverseRules = new Gauge({ name: 'migrate_dualrun_reverse_rules', help: 'cut-over rules mirrored back from Consul to etcd', registers: [this.registry] });
  private readonly datacenterLag = new Gauge({ name: 'migrate_dualrun_datacenter_lag_revisions', help: 'etcd revisions not yet applied, per Consul datacenter (rules in several datacenters)', labelNames: ['datacenter'], registers: [this.registry] });
  private readonly datacenterLagSeconds = new Gauge({ name: 'migrate_dualrun_datacenter_lag_seconds', help: 'seconds since the datacenter\'s checkpoint last equalled etcd\'s revision (0 when caught up)', labelNames: ['datacenter'], registers: [this.registry] });
  private readonly datacenterCheckpoint = new Gauge({ name: 'migrate_dualrun_datacenter_checkpoint_revision', help: 'last etcd revision fully applied, per Consul datacenter', labelNames: ['datacenter'], registers: [this.registry] });
  private readonly datacenterConnected = new Gauge({ name: 'migrate_dualrun_datacenter_connected', help: '1 while the datacenter is being replicated into, 0 while it does not answer', labelNames: ['datacenter'], registers: [this.registry] });
  private readonly serviceInstances = new Gauge({ name: 'migrate_dualrun_service_instances', help: 'catalog instances kept for service rules: critical, or passing (instances without a lease have no check and count as passing)', labelNames: ['status'], registers: [this.registry] });
  private readonly lateWrites = new Counter({ name: 'migrate_dualrun_late_writes_total', help: 'etcd writes under a rule Consul owns that the reverse mirror did not make (applications not switched)', labelNames: ['rule'], registers: [this.registry] });
  private readonly counters: Record<string, Counter> = {};
  private readonly seen: Record<string, number> = {};
  private server: http.Server | undefined;

  /** `heartbeat`: the dual-run writes a heartbeat key (`--heartbeat-key`), so the end-to-end gauge is exported. */
  constructor(options: { heartbeat?: boolean } = {}) {
    if (options.heartbeat) {
      this.heartbeatLag = new Gauge({
        name: 'migrate_dualrun_heartbeat_lag_seconds',
        help: 'end-to-end lag: from the heartbeat key\'s put in etcd to the commit in Consul of a checkpoint at or past its revision (the age of a heartbeat still waiting, when larger)',
        registers: [this.registry],
        collect: () => {
          const seconds = this.stats ? heartbeatLagSeconds(this.stats.heartbeat, Date.now()) : undefined;
          if (seconds !== undefined) this.heartbeatLag!.set(seconds);
        },
      });
    }
    for (const [field, help] of [
      ['events', 'etcd events the watch delivered in the mapped ranges, whatever became of them (replicated, skipped as keep or unmappable, late writes under a cut-over rule, its own reverse writes)'], ['ops', 'Consul KV ops applied'], ['txns', 'Consul txns applied'],
      ['splitRevisions', 'etcd revisions too large for one txn, applied in parts'], ['rebaselines', 're-baselines after etcd compaction'],
      ['largePuts', 'values too large for a txn, written by single PUT'], ['repairs', 'txns re-planned after a failed lock check'],
      ['sessionsRecreated', 'sessions of live etcd leases that Consul no longer had, made again and their keys rewritten; Consul had deleted those keys meanwhile: at a start or takeover, after longer than their TTL with no dual-run leading (a stop, a leader that died); while leading, renewed too late or destroyed'],
      ['unmappable', 'etcd puts under a copy rule that Consul cannot take (key not servable, value over its limit): not replicated'],
      ['reverseOps', 'etcd ops applied by reverse mirrors (Consul to etcd)'], ['guardTrips', 'deletes the reverse mirror refused to derive (delete guard)'],
    ] as const) {
      this.counters[field] = new Counter({ name: `migrate_dualrun_${field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}_total`, help, registers: [this.registry] });
    }
    this.counters.errors = new Counter({ name: 'migrate_dualrun_errors_total', help: 'errors by kind', labelNames: ['kind'], registers: [this.registry] });
  }

  update(stats: DualRunStats): void {
    this.stats = stats;
    // The lags are set at scrape time (their collect), from these stats.
    // A former leader's figures would stay frozen in its gauges: a process that does not lead reports none (0), as a fresh standby.
    const leading = stats.role === 'leader';
    this.checkpoint.set(leading ? stats.checkpoint : 0);
    this.etcdRevision.set(leading ? heardRevision(stats) : 0);
    this.leader.set(leading ? 1 : 0);
    this.sessions.set(leading ? stats.sessions : 0);
    this.reverseRules.set(stats.reverseRules);
    for (const [datacenter, d] of Object.entries(stats.datacenters ?? {})) {
      this.datacenterLag.set({ datacenter }, datacenterLag(stats, d));
      this.datacenterLagSeconds.set({ datacenter }, datacenterLagSeconds(stats, d, Date.now()));
      this.datacenterCheckpoint.set({ datacenter }, d.checkpoint);
      this.datacenterConnected.set({ datacenter }, d.connected ? 1 : 0);
    }
    if (stats.services) {
      this.serviceInstances.set({ status: 'critical' }, stats.services.critical);
      this.serviceInstances.set({ status: 'passing' }, stats.services.instances - stats.services.critical);
    }
    for (const [rule, count] of Object.entries(stats.lateWrites)) {
      const delta = count - (this.seen[`late:${rule}`] ?? 0);
      if (delta > 0) this.lateWrites.inc({ rule }, delta);
      this.seen[`late:${rule}`] = count;
    }
    for (const field of ['events', 'ops', 'txns', 'splitRevisions', 'rebaselines', 'largePuts', 'unmappable', 'repairs', 'sessionsRecreated', 'reverseOps', 'guardTrips'] as const) {
      const delta = stats[field] - (this.seen[field] ?? 0);
      if (delta > 0) this.counters[field]!.inc(delta);
      this.seen[field] = stats[field];
    }
    for (const [kind, count] of Object.entries(stats.errors)) {
      const delta = count - (this.seen[`error:${kind}`] ?? 0);
      if (delta > 0) (this.counters.errors as Counter<'kind'>).inc({ kind }, delta);
      this.seen[`error:${kind}`] = count;
    }
  }

  /** Ready: a standby that Consul answers, or a leader that is connected and within a few revisions/seconds of etcd. */
  health(): { ready: boolean; body: Record<string, unknown> } {
    const s = this.stats;
    if (!s) return { ready: false, body: { status: 'starting' } };
    // A standby replicates nothing: no checkpoint or lag of its own (a former leader's would only grow), only whether it could
    // lead: Consul answered it lately (a Consul that holds requests open fails none of them for a minute).
    if (s.role !== 'leader') {
      const answering = s.connected && (s.consulAnsweredAt === undefined || Date.now() - s.consulAnsweredAt <= STANDBY_SILENT_MS);
      return { ready: s.role === 'standby' && answering, body: { status: s.role === 'stopped' ? 'stopped' : answering ? 'ready' : 'disconnected', role: s.role } };
    }
    const lag = lagRevisions(s);
    const seconds = lagSeconds(s, Date.now());
    // With several datacenters, a leader is ready only when every one of them is connected and caught up.
    const now = Date.now();
    // A leader whose checkpoint has not been written for twice the heartbeat: etcd or Consul does not answer
    // (a frozen server holds requests open: no error says so, and no news from etcd means no visible lag).
    const stalledAt = (written: number) => now - written > 2 * HEARTBEAT_MS;
    const behind = Object.entries(s.datacenters ?? {}).filter(([, d]) => !d.connected || !d.started || stalledAt(d.checkpointWrittenAt) || datacenterLagSeconds(s, d, now) >= 10).map(([dc]) => dc);
    const stalled = stalledAt(s.checkpointWrittenAt);
    // A reverse mirror that has failed for 10 s: the applications' writes to a cut-over rule do not reach etcd (no rollback).
    const mirrorsFailing = Object.entries(s.mirrorsFailing).filter(([, since]) => now - since >= MIRROR_FAILING_MS).map(([rule]) => rule);
    // A leader setting up (reading the checkpoint, renewing the sessions) replicates nothing yet, and its lag counts nothing etcd made meanwhile;
    // nor does one whose watch has opened before etcd said its revision (its first progress notification).
    const started = s.started && heardRevision(s) > 0;
    const ready = s.connected && started && !stalled && seconds < 10 && behind.length === 0 && mirrorsFailing.length === 0;
    const status = ready ? 'ready' : mirrorsFailing.length > 0 && s.connected && !stalled ? 'mirror-failing' : !s.connected || behind.some((dc) => !s.datacenters![dc]!.connected) ? 'disconnected' : stalled || behind.some((dc) => stalledAt(s.datacenters![dc]!.checkpointWrittenAt)) ? 'stalled' : !started || behind.some((dc) => !s.datacenters![dc]!.started) ? 'starting' : 'catching-up';
    return {
      ready,
      body: {
        status, role: s.role, checkpoint: s.checkpoint, etcdRevision: heardRevision(s), lagRevisions: lag, lagSeconds: seconds, checkpointAgeSeconds: Math.round((now - s.checkpointWrittenAt) / 1000),
        ...(mirrorsFailing.length > 0 ? { mirrorsFailing } : {}),
        ...(s.datacenters ? { datacenters: Object.fromEntries(Object.entries(s.datacenters).map(([dc, d]) => [dc, { connected: d.connected, checkpoint: d.checkpoint, lagRevisions: datacenterLag(s, d) }])) } : {}),
      },
    };
  }

  /** The Prometheus text `/metrics` serves. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  async listen(address: string): Promise<string> {
    const match = /^(?:(.*):)?(\d+)$/.exec(address);
    const port = Number(match?.[2]);
    if (!match || port > 65535) throw new UsageError('flag_invalid', `--metrics-addr ${address} is not host:port or :port (a port from 0 to 65535).`, { hint: 'For example --metrics-addr :9464 or 127.0.0.1:9464.' });
    const host = match[1] || '0.0.0.0';
    this.server = http.createServer(async (req, res) => {
      if (req.url === '/metrics') {
        res.setHeader('Content-Type', this.registry.contentType);
        res.end(await this.text());
      } else if (req.url === '/healthz') {
        const { ready, body } = this.health();
        res.statusCode = ready ? 200 : 503;
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify(body));
      } else {
        res.statusCode = 404;
        res.end();
      }
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', (err: NodeJS.ErrnoException) => {
        // Nothing of the address can be served: the flag is wrong for this host (exit 2), not the tool.
        const why = err.code === 'EADDRINUSE' ? 'the port is in use' : err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND' ? 'no interface of this host has that address' : err.code === 'EACCES' ? 'permission denied (a port below 1024 needs privileges)' : err.message;
        reject(new UsageError('metrics_addr_unavailable', `--metrics-addr ${address}: cannot listen there: ${why}.`, { hint: 'Pass another --metrics-addr (a free port, on an address of this host).' }));
      });
      this.server!.listen(port, host, () => resolve());
    });
    const bound = this.server.address();
    return typeof bound === 'object' && bound ? `${bound.address}:${bound.port}` : address;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
