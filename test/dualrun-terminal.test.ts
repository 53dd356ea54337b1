import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { configDir, rawEtcd, runCli, serverEnv } from './support/harness.js';
import { Terminal } from './support/terminal.js';

/**
 * `migrate dualrun` on a real pseudo-terminal (tmux): the ink status view is
 * redrawn below the log lines while it runs, and Ctrl-C stops it cleanly
 * (exit 0). The screen is read back with `tmux capture-pane`.
 */
const etcd = rawEtcd();
const id = `drtui-${randomBytes(3).toString('hex')}`;
const root = `/${id}`;
const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: app, from: ${root}/app/, to: ${id}/app/ }\n`);
const checkpointOn = (screen: string): number => Number(/checkpoint (\d+)\s+etcd revision/.exec(screen)?.[1] ?? NaN);

afterAll(() => etcd.close());

describe('dualrun on a terminal (real servers, real pseudo-terminal)', () => {
  it('draws the live status view with the log lines above it; the checkpoint advances; Ctrl-C exits 0', async () => {
    await etcd.put(`${root}/app/seed`).value('1');
    expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
    const terminal = new Terminal(['dualrun', '--heartbeat-key', `${root}/heartbeat`], { cwd: dir, env: serverEnv(), columns: 140 });
    const screenUntil = (what: string, test: (screen: string) => boolean) => terminal.until(what, test, 20_000);
    try {
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
      terminal.send('C-c');
      const done = await terminal.exit(20_000);
      expect(done.code, done.screen).toBe(0);
      expect(done.screen).toContain('stopped (signal)');
    } finally {
      terminal.close();
    }
  });
});
