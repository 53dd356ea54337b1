/**
 * The README's walkthrough, run as written (issue 10: the docs cannot rot).
 *
 * Every command line of the ```sh blocks between `<!-- walkthrough:start -->`
 * and `<!-- walkthrough:end -->` runs in order through `sh -c`, exactly as a
 * reader would paste it, with what the README's setup block gives the reader:
 * `migrate` on PATH, ETCDCTL_ENDPOINTS and CONSUL_HTTP_ADDR pointing at an etcd
 * holding the demo keyspace (fixtures/demo) and an empty Consul, `DEMO` naming
 * fixtures/demo, and a fresh working folder. Each line must exit with the code
 * its comment states (`# exit 1: …`), 0 when it states none. A line ending in
 * `&` starts in the background (the test waits until `migrate status` sees the
 * dual-run running, as the README tells the reader to); `kill %1` stops it with
 * SIGTERM and expects it to exit 0.
 *
 * The servers are private (a fresh etcd and Consul for this file): the demo
 * mapping uses fixed prefixes and the migration id `demo`, and `audit` without a
 * mapping reads the whole keyspace, so shared servers would change its result.
 *
 * WALKTHROUGH_TRANSCRIPT=<file> writes every command's output there, for
 * refreshing the excerpts in the README.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, chmodSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { demoKeys, loadDemoKeyspace, type LoadedKeyspace } from '../fixtures/demo/keyspace.js';
import { startEtcd, type ConsulServer, type EtcdServer } from '../scripts/local-servers.js';
import { privateConsul, repoRoot } from './support/harness.js';

export interface WalkthroughStep {
  /** The line as written in the README (continuations joined). */
  line: string;
  /** The exit code its comment states, else 0. */
  exit: number;
  /** Ends in `&`: started in the background. */
  background: boolean;
}

/** The command lines of the walkthrough's ```sh blocks, in order. */
export function walkthroughSteps(markdown: string): WalkthroughStep[] {
  const start = markdown.indexOf('<!-- walkthrough:start -->');
  const end = markdown.indexOf('<!-- walkthrough:end -->');
  if (start < 0 || end < start) throw new Error('README.md has no <!-- walkthrough:start --> … <!-- walkthrough:end --> section');
  const section = markdown.slice(start, end);
  const steps: WalkthroughStep[] = [];
  for (const block of section.matchAll(/^```sh\n([\s\S]*?)^```$/gm)) {
    const lines = block[1]!.replace(/\\\n\s*/g, ' ').split('\n');
    for (const raw of lines) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      const comment = line.match(/\s#\s(.*)$/)?.[1] ?? '';
      const command = line.replace(/\s#\s.*$/, '').trim();
      steps.push({ line, exit: Number(comment.match(/\bexit (\d+)\b/)?.[1] ?? 0), background: /&$/.test(command) });
    }
  }
  return steps;
}

const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
const transcript = process.env.WALKTHROUGH_TRANSCRIPT;

let etcd: EtcdServer;
let consul: ConsulServer;
let client: Etcd3;
let loaded: LoadedKeyspace;

beforeAll(async () => {
  [etcd, consul] = await Promise.all([startEtcd(), privateConsul()]);
  client = new Etcd3({ hosts: etcd.endpoint });
  loaded = await loadDemoKeyspace(client, demoKeys());
});

afterAll(async () => {
  await loaded?.stop();
  client?.close();
  await Promise.all([etcd?.stop(), consul?.stop()]);
});

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function start(line: string, cwd: string, env: Record<string, string>): { child: ChildProcess; done: Promise<Run> } {
  // `exec` so that a signal to the child reaches migrate itself, not a shell around it.
  const child = spawn('sh', ['-c', `exec ${line}`], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const done = new Promise<Run>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr }));
  });
  return { child, done };
}

function record(step: string, run: Run): void {
  if (transcript) appendFileSync(transcript, `\n$ ${step}\n(exit ${run.code})\n--- stdout\n${run.stdout}--- stderr\n${run.stderr}`);
}

describe('README walkthrough', () => {
  const steps = walkthroughSteps(readme);

  it('covers the whole migration, from doctor to finalize', () => {
    const commands = steps.map((s) => s.line.match(/^migrate (\S+)/)?.[1]).filter(Boolean);
    for (const command of ['doctor', 'audit', 'init', 'plan', 'copy', 'verify', 'dualrun', 'status', 'cutover', 'rollback', 'finalize']) expect(commands).toContain(command);
    expect(steps.some((s) => /^migrate copy --dry-run/.test(s.line))).toBe(true);
    expect(steps.some((s) => s.background && /^migrate dualrun/.test(s.line))).toBe(true);
  });

  it('every command exits as the README says, run as written against real servers holding the demo keyspace', async () => {
    const work = mkdtempSync(join(tmpdir(), 'migrate-walkthrough-'));
    const bin = join(work, '.bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'migrate'), `#!/bin/sh\nexec "${process.execPath}" "${join(repoRoot, 'bin', 'migrate.js')}" "$@"\n`);
    chmodSync(join(bin, 'migrate'), 0o755);
    const cwd = join(work, 'demo-migration');
    mkdirSync(cwd);
    const env: Record<string, string> = {
      PATH: `${bin}:${process.env.PATH ?? ''}`,
      HOME: process.env.HOME ?? '/tmp',
      CI: 'true',
      ETCDCTL_ENDPOINTS: etcd.endpoint,
      CONSUL_HTTP_ADDR: consul.address,
      DEMO: join(repoRoot, 'fixtures', 'demo'),
    };
    if (transcript) writeFileSync(transcript, `# walkthrough transcript: etcd ${etcd.endpoint}, Consul ${consul.version} ${consul.address}\n`);

    let background: { step: WalkthroughStep; child: ChildProcess; done: Promise<Run> } | undefined;
    try {
      for (const step of steps) {
        const command = step.line.replace(/\s#\s.*$/, '').trim();
        if (/^kill %1$/.test(command)) {
          expect(background, `\`${step.line}\`: nothing runs in the background`).toBeDefined();
          background!.child.kill('SIGTERM');
          const run = await background!.done;
          record(`${background!.step.line} (stopped by ${command})`, run);
          expect(run.code, `\`${background!.step.line}\` after SIGTERM\n${run.stderr}`).toBe(step.exit);
          background = undefined;
          continue;
        }
        // Only commands the reader can run with what the setup gave them; anything else must be taught to this test.
        expect(command, 'the walkthrough runs migrate and cp only (teach this test any other command)').toMatch(/^(migrate|cp) /);
        if (step.background) {
          expect(background, 'one background command at a time').toBeUndefined();
          background = { step, ...start(command.replace(/&$/, '').trim(), cwd, env) };
          await waitForDualRun(cwd, env, background.done);
          continue;
        }
        const run = await start(command, cwd, env).done;
        record(step.line, run);
        expect(run.code, `\`${step.line}\` exited ${run.code}, the README says ${step.exit}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`).toBe(step.exit);
      }
      expect(background, 'the walkthrough stops what it starts in the background (kill %1)').toBeUndefined();
    } finally {
      background?.child.kill('SIGKILL');
    }
  }, 120_000);
});

/** Waits until `migrate status` reports the dual-run running (the README's instruction), or fails if it exits. */
async function waitForDualRun(cwd: string, env: Record<string, string>, exited: Promise<Run>): Promise<void> {
  let gone: Run | undefined;
  void exited.then((run) => (gone = run));
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (gone) throw new Error(`the background dual-run exited ${gone.code}\n${gone.stderr}`);
    const run = await start('migrate status --format json', cwd, env).done;
    if (run.code === 0 && (JSON.parse(run.stdout) as { dualRun?: { running?: boolean } }).dualRun?.running) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error('the background dual-run did not show as running in `migrate status` within 30 s');
}
