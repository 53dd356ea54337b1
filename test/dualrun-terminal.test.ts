import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configDir, rawEtcd, repoRoot, runCli, serverEnv } from './support/harness.js';

/**
 * `migrate dualrun` on a real pseudo-terminal (tmux): the ink status view is
 * redrawn below the log lines while it runs, and Ctrl-C stops it cleanly
 * (exit 0). The screen is read back with `tmux capture-pane`.
 */
const etcd = rawEtcd();
const id = `drtui-${randomBytes(3).toString('hex')}`;
const root = `/${id}`;
const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: app, from: ${root}/app/, to: ${id}/app/ }\n`);
const socket = `migrate-drtui-${process.pid}`;
const session = `s${randomBytes(3).toString('hex')}`;

function tmux(...args: string[]): string {
  return execFileSync('tmux', ['-L', socket, ...args], { encoding: 'utf8' });
}

async function screenUntil(what: string, test: (screen: string) => boolean, timeoutMs = 20_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let screen = '';
  while (Date.now() < deadline) {
    screen = tmux('capture-pane', '-p', '-t', session);
    if (test(screen)) return screen;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}; the screen:\n${screen}`);
}

const checkpointOn = (screen: string): number => Number(/checkpoint (\d+)\s+etcd revision/.exec(screen)?.[1] ?? NaN);

afterAll(() => {
  etcd.close();
  try {
    execFileSync('tmux', ['-L', socket, 'kill-server'], { stdio: 'ignore' });
  } catch {
    // no tmux server left to stop
  }
});

describe('dualrun on a terminal (real servers, real pseudo-terminal)', () => {
  it('draws the live status view with the log lines above it; the checkpoint advances; Ctrl-C exits 0', async () => {
    await etcd.put(`${root}/app/seed`).value('1');
    expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
    const env = Object.entries({ ...serverEnv(), TERM: 'xterm-256color' }).map(([k, v]) => `${k}=${v}`);
    const command = ['env', '-u', 'CI', ...env, process.execPath, join(repoRoot, 'bin', 'migrate.js'), 'dualrun', '--heartbeat-key', `${root}/heartbeat`]
      .map((w) => `'${w}'`).join(' ');
    tmux('new-session', '-d', '-s', session, '-x', '140', '-y', '30', '-c', dir, `${command}; echo "__EXIT $?"; sleep 60`);
    const leading = await screenUntil('the view as leader with a heartbeat lag', (s) => /dual-run: leader/.test(s) && /\(heartbeat, end to end\)/.test(s));
    // The log line of taking the lock sits above the view.
    expect(leading.indexOf('leading the dual-run')).toBeGreaterThanOrEqual(0);
    expect(leading.indexOf('leading the dual-run')).toBeLessThan(leading.indexOf('dual-run: leader'));
    expect(leading).toMatch(/events \d+ \(\d+\/s\)\s+txns \d+/);
    expect(leading).toMatch(/reverse-mirrored rules 0\s+late writes 0\s+errors 0/);
    const before = checkpointOn(leading);
    const put = Number((await etcd.put(`${root}/app/new`).value('x').exec()).header.revision);
    const after = await screenUntil(`the checkpoint at ${put} or past`, (s) => checkpointOn(s) >= put && /events 1 /.test(s));
    expect(checkpointOn(after)).toBeGreaterThan(before);
    // One view, redrawn in place: the status line appears once.
    expect(after.match(/dual-run: leader/g)).toHaveLength(1);
    tmux('send-keys', '-t', session, 'C-c');
    const done = await screenUntil('the exit', (s) => /__EXIT \d+/.test(s));
    expect(/__EXIT (\d+)/.exec(done)?.[1], done).toBe('0');
    expect(done).toContain('stopped (signal)');
  });
});
