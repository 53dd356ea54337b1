/**
 * Shared pieces of the benchmarks: real servers, loading a generated keyspace
 * into etcd fast, running the CLI as a child process with its peak RSS and CPU
 * time, the CPU the servers use meanwhile, and printing one JSON line per case
 * with the command that reproduces it.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { repoRoot } from '../scripts/local-servers.js';

export function report(result: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ ...result, at: new Date().toISOString() })}\n`);
}

/** Writes `count` keys of `valueBytes` random bytes under `prefix`, 1,000 per etcd txn, 4 txns in flight. */
export async function loadKeys(client: Etcd3, prefix: string, count: number, valueBytes: number): Promise<void> {
  const value = () => randomBytes(valueBytes);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const start = next;
      next += 1000;
      if (start >= count) return;
      const puts = Array.from({ length: Math.min(1000, count - start) }, (_, j) => client.put(`${prefix}${String(start + j).padStart(8, '0')}`).value(value()));
      await client.if(`${prefix}00000000`, 'Mod', '>', -1).then(...puts).commit();
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}

let ticks: number | undefined;

/** Clock ticks per second of /proc's CPU counters. */
function ticksPerSecond(): number {
  ticks ??= Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  return ticks;
}

/** CPU seconds (user + system) process `pid` has used so far, from /proc; NaN where that cannot be read. */
function cpuSeconds(pid: number): number {
  try {
    // Fields after "(comm) ": state is [0], utime [11], stime [12] (proc(5) fields 14 and 15).
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond();
  } catch {
    return NaN;
  }
}

/** The machine's busy and stolen CPU seconds so far, summed over its cores (/proc/stat); NaN where that cannot be read. */
function machineSeconds(): { busy: number; steal: number } {
  try {
    // cpu  user nice system idle iowait irq softirq steal …
    const [user, nice, system, , , irq, softirq, steal] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number) as number[];
    return { busy: (user! + nice! + system! + irq! + softirq!) / ticksPerSecond(), steal: steal! / ticksPerSecond() };
  } catch {
    return { busy: NaN, steal: NaN };
  }
}

export interface CpuUse {
  /** The machine's cores: CPU seconds over wall seconds cannot exceed it. */
  cores: number;
  wallSeconds: number;
  /** CPU seconds per process over the interval. */
  seconds: Record<string, number>;
  /** All of them over the wall time: how many cores were busy on average. */
  busyCores: number;
  /**
   * What else took the machine meanwhile, in CPU seconds: `others`, processes of
   * this machine that are not measured (the machine's busy time minus the processes
   * above); `steal`, time the hypervisor gave the cores to other machines. Either
   * one large means the figures of that case were taken on a crowded machine.
   */
  machine: { others: number; steal: number };
}

/**
 * Measures the CPU that running processes (by pid) and this one (`bench`) use
 * from now until `read()`. Processes that exit before it (the tool) are added by
 * the caller through `extra`.
 */
export function cpuMeter(pids: Record<string, number>): { read(extra?: Record<string, number>): CpuUse } {
  const start = Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, cpuSeconds(pid)]));
  const self = process.cpuUsage();
  const machine = machineSeconds();
  const t0 = performance.now();
  return {
    read(extra = {}) {
      const wallSeconds = (performance.now() - t0) / 1000;
      const own = process.cpuUsage(self);
      const now = machineSeconds();
      const seconds: Record<string, number> = { bench: (own.user + own.system) / 1e6, ...extra };
      for (const [name, pid] of Object.entries(pids)) seconds[name] = cpuSeconds(pid) - start[name]!;
      const rounded = Object.fromEntries(Object.entries(seconds).map(([k, v]) => [k, +v.toFixed(2)]));
      const total = Object.values(seconds).reduce((a, b) => a + b, 0);
      // /proc/stat counts in whole ticks per core: a few hundredths either way are rounding.
      const others = Math.max(0, now.busy - machine.busy - total);
      return {
        cores: availableParallelism(), wallSeconds: +wallSeconds.toFixed(2), seconds: rounded, busyCores: +(total / wallSeconds).toFixed(2),
        machine: { others: +others.toFixed(2), steal: +(now.steal - machine.steal).toFixed(2) },
      };
    },
  };
}

/** The wall time `use` would take if its CPU seconds were spread perfectly over the machine's cores. */
export function cpuBoundSeconds(use: CpuUse, without: string[] = ['bench']): number {
  const total = Object.entries(use.seconds).filter(([k]) => !without.includes(k)).reduce((a, [, v]) => a + v, 0);
  return total / use.cores;
}

export interface ChildRun {
  code: number | null;
  ms: number;
  maxRssMb: number;
  /** User + system CPU seconds of the child, as it reported on exit. */
  cpuSeconds: number;
  stdout: string;
  stderr: string;
}

/** Runs `bin/migrate.js` with `args`, timing the whole process and reading its peak RSS and CPU time. */
export function runMigrate(args: string[], options: { cwd: string; env: Record<string, string> }): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(process.execPath, ['--import', join(repoRoot, 'bench', 'rss-reporter.mjs'), join(repoRoot, 'bin', 'migrate.js'), ...args], {
      cwd: options.cwd,
      env: { PATH: process.env.PATH ?? '', CI: 'true', ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c));
    child.stderr.on('data', (c: Buffer) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      const rss = /maxRSS=(\d+)/.exec(stderr);
      const cpu = /cpuMicros=(\d+)/.exec(stderr);
      resolve({ code, ms, maxRssMb: rss ? Number(rss[1]) / 1024 : NaN, cpuSeconds: cpu ? Number(cpu[1]) / 1e6 : NaN, stdout, stderr });
    });
  });
}

export function uniqueId(label: string): string {
  return `${label}-${randomBytes(3).toString('hex')}`;
}
