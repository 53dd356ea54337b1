import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configDir, rawEtcd, runCli, serverEnv } from './support/harness.js';
import { Terminal } from './support/terminal.js';

/**
 * Long commands on a real pseudo-terminal (tmux): the live ink view with a bar
 * per rule; piped, throttled plain lines and no terminal escapes. The screen
 * is read back with `tmux capture-pane`, as a user would see it.
 */
const etcd = rawEtcd();
const id = `tui-${randomBytes(3).toString('hex')}`;
const root = `/${id}`;
const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: orders, from: ${root}/orders/, to: ${id}/orders/ }\n  - { name: users, from: ${root}/users/, to: ${id}/users/ }\n`);
/** Runs `migrate <args>` in a 120×30 pseudo-terminal and returns the screen once it has exited. */
async function onTerminal(args: string[], env: Record<string, string> = {}): Promise<{ screen: string; code: number }> {
  const terminal = new Terminal(args, { cwd: dir, env: { ...serverEnv(), ...env } });
  try {
    return await terminal.exit();
  } finally {
    terminal.close();
  }
}

beforeAll(async () => {
  const value = Buffer.alloc(64, 7);
  for (let i = 0; i < 3000; i += 500) {
    const txn = etcd.if(`${root}/never`, 'Create', '==', 0);
    const puts = [];
    for (let j = i; j < i + 500; j++) puts.push(etcd.put(`${root}/${j % 3 ? 'orders' : 'users'}/k${String(j).padStart(5, '0')}`).value(value));
    await txn.then(...puts).commit();
  }
});

afterAll(() => etcd.close());

describe('live progress (real servers, real pseudo-terminal)', () => {
  it('copy and verify draw the ink view with a bar per rule on a terminal', async () => {
    const copy = await onTerminal(['copy']);
    expect(copy.code, copy.screen).toBe(0);
    // The final frame stays on screen: a bar per rule, full, with its counts.
    expect(copy.screen).toMatch(/orders\s+█{24}\s+2000\/2000/);
    expect(copy.screen).toMatch(/users\s+█{24}\s+1000\/1000/);
    expect(copy.screen).toContain('3000/3000 keys');

    const verify = await onTerminal(['verify']);
    expect(verify.code, verify.screen).toBe(0);
    expect(verify.screen).toMatch(/orders\s+█{24}\s+2000\/2000/);
    expect(verify.screen).toContain('PARITY');
  });

  it('NO_COLOR turns off the live view\'s bold and colour', async () => {
    for (const [env, bold] of [[{}, true], [{ NO_COLOR: '1' }, false]] as const) {
      const terminal = new Terminal(['verify'], { cwd: dir, env: { ...serverEnv(), ...env } });
      try {
        await terminal.exit();
        expect(terminal.screen(true).includes('\x1b[1m'), JSON.stringify(env)).toBe(bold);
      } finally {
        terminal.close();
      }
    }
  });

  it('a dumb terminal (TERM=dumb), which cannot redraw, gets plain progress lines', async () => {
    const verify = await onTerminal(['verify'], { TERM: 'dumb' });
    expect(verify.code, verify.screen).toBe(0);
    expect(verify.screen).toMatch(/^verifying at etcd revision \d+: \d+\/3000 keys, .* keys\/s, ETA /m);
    expect(verify.screen).not.toContain('█');
  });

  it('Ctrl-C during a copy: the notice shows in the live view\'s last frame, not wiped by a redraw, and one frame stays', async () => {
    const own = `tui-int-${randomBytes(3).toString('hex')}`;
    const cwd = configDir(`version: 1\nid: ${own}\nrules:\n  - { name: orders, from: ${root}/orders/, to: ${own}/orders/ }\n  - { name: users, from: ${root}/users/, to: ${own}/users/ }\n`);
    const terminal = new Terminal(['copy', '--rate', '300'], { cwd, env: serverEnv() });
    try {
      await terminal.until('the live view, some keys copied', (screen) => /^copying: [1-9]\d*\/3000 keys/m.test(screen));
      terminal.send('C-c');
      const { code, screen } = await terminal.exit();
      expect(code, screen).toBe(130);
      // A line of the frame ("  ! "), which its redraws keep, not one written below it, which the next redraw wipes.
      expect(screen).toMatch(/^ {2}! interrupt received: stopping at the next safe point/m);
      expect(screen.match(/^copying: /gm), screen).toHaveLength(1);
      expect(screen.match(/^\s+orders\s+[█░]+/gm), screen).toHaveLength(1);
      expect(screen).toContain('INTERRUPTED');
    } finally {
      terminal.close();
    }
  });

  it('piped, the same commands write plain progress lines and no terminal escapes', async () => {
    const run = await runCli(['verify', '--progress', 'auto'], { cwd: dir, env: serverEnv() });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/^verifying at etcd revision \d+: \d+\/3000 keys, .* keys\/s, ETA /m);
    expect(run.stderr).not.toContain('█');
    expect(run.stderr + run.stdout).not.toMatch(/\x1b\[/);
  });
});
