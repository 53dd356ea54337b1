import type { ReactElement } from 'react';
import { setLiveNotice, type CommandContext } from '../cli/context.js';

/** What a long command reports while it works. */
export interface ProgressState {
  title: string;
  /** `bytes`: of the values done, for work that counts them (copy); the line leaves it out otherwise. */
  items: ProgressItem[];
  retries: number;
  startedAt: number;
}

export interface ProgressItem {
  name: string;
  total: number;
  done: number;
  bytes?: number;
}

/** A live view of long work: ink on a terminal, throttled plain lines otherwise, NDJSON with `--progress json`. */
export interface ProgressView {
  update(state: ProgressState): void;
  warn(message: string): void;
  /** Draws the final state and releases the terminal. */
  close(): Promise<void>;
}

function rate(state: ProgressState, now: number): { done: number; total: number; perSecond: number; etaSeconds: number | undefined } {
  const done = state.items.reduce((n, i) => n + i.done, 0);
  const total = state.items.reduce((n, i) => n + i.total, 0);
  const seconds = Math.max(0.001, (now - state.startedAt) / 1000);
  const perSecond = done / seconds;
  // Not from the first page alone (the connection's set-up in its time: 500 of 500,000 keys said 13 minutes).
  const judged = seconds >= ETA_AFTER_SECONDS || (total > 0 && done >= total / 20);
  return { done, total, perSecond, etaSeconds: judged && perSecond > 0 && total >= done ? (total - done) / perSecond : undefined };
}

/** How long the work runs before its rate gives an ETA (unless a twentieth of it is done). */
const ETA_AFTER_SECONDS = 3;

function formatDuration(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds)) return '?';
  if (seconds < 60) return `${Math.ceil(seconds)}s`;
  return `${Math.floor(seconds / 60)}m${String(Math.ceil(seconds % 60)).padStart(2, '0')}s`;
}

export function plainProgressLine(state: ProgressState, now: number): string {
  // Nothing counted yet (a wait before the reads): the title alone, not "0/0 keys, ETA ?".
  if (state.items.length === 0) return state.title;
  const r = rate(state, now);
  const counted = state.items.some((i) => i.bytes !== undefined);
  const bytes = state.items.reduce((n, i) => n + (i.bytes ?? 0), 0);
  return `${state.title}: ${r.done}/${r.total} keys, ${counted ? `${(bytes / 1048576).toFixed(1)} MiB, ` : ''}${Math.round(r.perSecond)} keys/s, ETA ${formatDuration(r.etaSeconds)}${state.retries ? `, ${state.retries} retries` : ''}`;
}

export function createProgressView(ctx: CommandContext): ProgressView {
  if (ctx.progress === 'none') return { update() {}, warn: (m) => ctx.warn(m), async close() {} };
  if (ctx.progress === 'json') {
    let last = 0;
    // The state not sent yet (throttled): the last event of a run says where it ended.
    let unsent: ProgressState | undefined;
    const send = (state: ProgressState, now: number) => {
      last = now;
      unsent = undefined;
      const r = rate(state, now);
      // etaSeconds null until the rate can tell (as the plain line's `ETA ?`).
      ctx.event({ event: 'progress', title: state.title, done: r.done, total: r.total, keysPerSecond: Math.round(r.perSecond), etaSeconds: r.etaSeconds === undefined ? null : Math.ceil(r.etaSeconds), items: state.items, retries: state.retries });
    };
    return {
      update(state) {
        const now = Date.now();
        if (now - last < 500) unsent = state;
        else send(state, now);
      },
      warn: (message) => ctx.event({ event: 'warning', message }),
      async close() {
        if (unsent) send(unsent, Date.now());
      },
    };
  }
  // A dumb terminal cannot move the cursor up to redraw: plain lines.
  if (ctx.progress === 'auto' && ctx.interactive && ctx.io.env.TERM !== 'dumb') return inkProgress(ctx);
  let last = 0;
  let latest: ProgressState | undefined;
  // What the last line said was done: the closing line is not the same one again.
  let said = '';
  const done = (state: ProgressState) => `${state.title} ${state.items.map((i) => `${i.done}/${i.total}`).join(' ')}`;
  return {
    update(state) {
      latest = state;
      const now = Date.now();
      if (now - last < 2000) return;
      last = now;
      said = done(state);
      ctx.log(plainProgressLine(state, now));
    },
    warn: (m) => ctx.warn(m),
    async close() {
      if (latest && done(latest) !== said) ctx.log(plainProgressLine(latest, Date.now()));
      latest = undefined;
    },
  };
}

function bar(done: number, total: number, width = 24): string {
  const filled = total > 0 ? Math.max(0, Math.min(width, Math.round((done / total) * width))) : 0;
  return `${'█'.repeat(filled)}${'░'.repeat(width - filled)}`;
}

type Ink = typeof import('ink');
type CreateElement = typeof import('react').createElement;

/** `styled`: bold and colour, which NO_COLOR (https://no-color.org) turns off. */
function progressElement({ Box, Text }: Ink, h: CreateElement, state: ProgressState, now: number, warnings: string[], styled: boolean): ReactElement {
  return h(Box, { flexDirection: 'column' },
    h(Text, { bold: styled }, plainProgressLine(state, now)),
    ...state.items.map((item) => h(Text, { key: item.name }, `  ${item.name.padEnd(20)} ${bar(item.done, item.total)} ${item.done}/${item.total}`)),
    ...warnings.slice(-5).map((w, i) => h(Text, { key: `w${i}`, ...(styled ? { color: 'yellow' } : {}) }, `  ! ${w}`)),
  );
}

function inkProgress(ctx: CommandContext): ProgressView {
  let instance: import('ink').Instance | undefined;
  let latest: ProgressState | undefined;
  const warnings: string[] = [];
  let last = 0;
  // ink and React load with the view, on a terminal only: a command off one does not pay for them.
  const ready = Promise.all([import('ink'), import('react')]);
  const draw = (force: boolean) => {
    if (!latest) return;
    const now = Date.now();
    if (!force && now - last < 100) return;
    last = now;
    const state = latest;
    const shown = [...warnings];
    void ready.then(([ink, react]) => {
      const element = progressElement(ink, react.createElement, state, now, shown, !ctx.io.env.NO_COLOR);
      if (instance) instance.rerender(element);
      else instance = ink.render(element, { stdout: process.stderr as unknown as NodeJS.WriteStream, patchConsole: false, exitOnCtrlC: false });
    });
  };
  const warn = (message: string) => {
    warnings.push(message);
    draw(true);
  };
  // Once the view shows: before, a notice written around it is not wiped.
  setLiveNotice((message) => {
    if (!latest) return false;
    warn(message);
    return true;
  });
  return {
    update(state) {
      latest = state;
      draw(false);
    },
    warn,
    async close() {
      setLiveNotice(undefined);
      draw(true);
      await ready;
      instance?.unmount();
      instance = undefined;
      latest = undefined;
    },
  };
}
