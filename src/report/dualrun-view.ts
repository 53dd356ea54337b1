import { createElement as h, type ReactElement } from 'react';
import type { DualRunStats } from '../dualrun/dualrun.js';
import { datacenterLag, heardRevision, lagRevisions, lagSeconds } from '../dualrun/metrics.js';
import { scrub } from './redact.js';

/** How often the live view is redrawn (ms). */
export const DUALRUN_VIEW_MS = 500;

/** The events/s the view shows: events over the last few seconds of samples. */
export class EventRate {
  private readonly samples: { at: number; events: number }[] = [];

  constructor(private readonly windowMs = 5000) {}

  add(at: number, events: number): void {
    this.samples.push({ at, events });
    while (this.samples.length > 2 && this.samples[0]!.at < at - this.windowMs) this.samples.shift();
  }

  perSecond(): number {
    const first = this.samples[0];
    const last = this.samples.at(-1);
    if (!first || !last || last.at <= first.at) return 0;
    return Math.max(0, (last.events - first.events) / ((last.at - first.at) / 1000));
  }
}

function total(counts: Record<string, number>): number {
  return Object.values(counts).reduce((n, c) => n + c, 0);
}

function seconds(value: number): string {
  return value < 10 ? `${value.toFixed(2)} s` : `${Math.round(value)} s`;
}

/** The status lines of a running dual-run (pure: the terminal view draws them). */
export function renderDualRunStatus(stats: DualRunStats, now: number, eventsPerSecond: number, heartbeat: boolean): string[] {
  const role = stats.role === 'leader' ? (!stats.connected ? 'leader (reconnecting)' : stats.started ? 'leader' : 'leader (setting up)') : stats.role === 'standby' ? 'standby (waiting for the leader lock)' : stats.role;
  const measured = heartbeat && stats.heartbeat ? 'heartbeat, end to end' : 'since caught up';
  const errors = total(stats.errors);
  const late = total(stats.lateWrites);
  return [
    `dual-run: ${role}`,
    `  checkpoint ${stats.checkpoint}   etcd revision ${heardRevision(stats)}   lag ${lagRevisions(stats)} revision(s), ${seconds(lagSeconds(stats, now))} (${measured})`,
    `  events ${stats.events} (${Math.round(eventsPerSecond)}/s)   txns ${stats.txns}   ops ${stats.ops}   sessions ${stats.sessions}`,
    `  reverse-mirrored rules ${stats.reverseRules}   late writes ${late}${late ? ` (${Object.entries(stats.lateWrites).map(([r, n]) => `${r}: ${n}`).join(', ')})` : ''}   errors ${errors}${errors ? ` (${Object.entries(stats.errors).map(([k, n]) => `${k}: ${n}`).join(', ')})` : ''}`,
    ...(stats.splitRevisions || stats.rebaselines || stats.guardTrips ? [`  split revisions ${stats.splitRevisions}   re-baselines ${stats.rebaselines}   delete-guard trips ${stats.guardTrips}`] : []),
    ...Object.entries(stats.datacenters ?? {}).map(([dc, d]) => {
      const lag = datacenterLag(stats, d);
      const state = d.role !== 'leader' ? d.role : d.connected ? 'replicating' : 'NOT ANSWERING (retrying)';
      return `  datacenter ${dc}: ${state}   checkpoint ${d.checkpoint}   lag ${lag} revision(s)${lag > 0 && d.checkpoint < d.etcdRevision ? `, ${seconds((now - d.caughtUpAt) / 1000)}` : ''}   txns ${d.txns}   sessions ${d.sessions}`;
    }),
  ];
}

/** The dual-run's live status on a terminal: log lines scroll above it, the status is redrawn below. */
export interface DualRunView {
  update(stats: DualRunStats): void;
  /** Writes one log line above the view. */
  log(line: string): void;
  /** Draws the last state and releases the terminal. */
  close(): Promise<void>;
}

/** Draws the view with ink on `stream` (stderr), redrawn every {@link DUALRUN_VIEW_MS}. */
export function createDualRunView(stream: NodeJS.WriteStream, options: { heartbeat: boolean }): DualRunView {
  let latest: DualRunStats | undefined;
  const rate = new EventRate();
  // ink's writer keeps the live frame below whatever is written through it.
  let write: ((data: string) => void) | undefined;
  const queued: string[] = [];
  let instance: import('ink').Instance | undefined;
  let closed = false;
  const ready = import('ink').then((ink) => {
    const Writer = (): null => {
      const { write: inkWrite } = ink.useStdout();
      write = inkWrite;
      return null;
    };
    const View = ({ lines }: { lines: string[] }): ReactElement => h(ink.Box, { flexDirection: 'column' },
      h(Writer),
      ...lines.map((line, i) => h(ink.Text, { key: i, bold: i === 0 }, line)),
    );
    return { ink, View };
  });
  const frame = (): string[] => {
    if (!latest) return ['dual-run: starting'];
    const now = Date.now();
    rate.add(now, latest.events);
    return renderDualRunStatus(latest, now, rate.perSecond(), options.heartbeat);
  };
  const draw = async (): Promise<void> => {
    const { ink, View } = await ready;
    if (closed && !instance) return;
    const element = h(View, { lines: frame() });
    if (instance) instance.rerender(element);
    else instance = ink.render(element, { stdout: stream, patchConsole: false, exitOnCtrlC: false });
    if (write) for (const line of queued.splice(0)) write(line);
  };
  void draw();
  const timer = setInterval(() => void draw(), DUALRUN_VIEW_MS);
  timer.unref();
  return {
    update(stats) {
      latest = stats;
      rate.add(Date.now(), stats.events);
    },
    log(line) {
      const text = scrub(line.endsWith('\n') ? line : `${line}\n`);
      if (write) write(text);
      else queued.push(text);
    },
    async close() {
      clearInterval(timer);
      await draw();
      closed = true;
      instance?.unmount();
      instance = undefined;
      // Lines logged after the view is gone go straight to the stream.
      write = (data) => void stream.write(data);
      for (const line of queued.splice(0)) stream.write(line);
    },
  };
}
