import type { CheckpointState } from '../copy/copy.js';
import { HEARTBEAT_MS } from '../dualrun/heartbeat.js';

/**
 * How verify decides that a dual-run is running, so that it waits for the
 * dual-run's checkpoint instead of comparing at once (pure).
 *
 * The dual-run rewrites its checkpoint document (`_migrate/<id>/checkpoint`,
 * `by: 'dualrun'`) with every applied revision and, when nothing changes, at
 * least every {@link DUALRUN_HEARTBEAT_MS} (its heartbeat: it asks etcd for
 * watch progress and writes a checkpoint-only txn, DESIGN §3). A dual-run
 * counts as running when either
 * - its checkpoint was updated within 2 × the heartbeat (20 s) of verify's
 *   clock (a clock ahead of verify's counts as fresh), or
 * - the checkpoint moved (revision or `updated`) since verify last read it,
 *   which needs no clock agreement between the two machines.
 *
 * A checkpoint written by `copy`, an older `dualrun` one, one the dual-run
 * marked `stopped` on a clean stop, or none at all means no dual-run: verify compares immediately, and every change made in
 * etcd since the copy is drift.
 */
export const DUALRUN_HEARTBEAT_MS = HEARTBEAT_MS;

/** Why a cut was taken the way it was. */
export type CutReason =
  /** A dual-run is running: Consul was read once its checkpoint reached the etcd revision. */
  | 'dualrun-running'
  /** No checkpoint document: nothing replicates into Consul. */
  | 'no-checkpoint'
  /** The checkpoint was written by `copy`: no dual-run has started. */
  | 'copy-checkpoint'
  /** A dual-run wrote the checkpoint, but it is older than 2 × the heartbeat and did not move. */
  | 'dualrun-stopped';

export interface CheckpointReading {
  running: boolean;
  reason: CutReason;
  /** Milliseconds since `updated`, when the document has a parsable time. */
  ageMs: number | undefined;
}

export function readCheckpointState(doc: CheckpointState | undefined, previous: CheckpointState | undefined, nowMs: number, heartbeatMs = DUALRUN_HEARTBEAT_MS): CheckpointReading {
  if (!doc) return { running: false, reason: 'no-checkpoint', ageMs: undefined };
  const updated = Date.parse(doc.updated);
  const ageMs = Number.isFinite(updated) ? Math.max(0, nowMs - updated) : undefined;
  if (doc.by !== 'dualrun') return { running: false, reason: 'copy-checkpoint', ageMs };
  // Its last checkpoint, written on a clean stop: stopped now, not once the heartbeat goes stale.
  if (doc.stopped !== undefined) return { running: false, reason: 'dualrun-stopped', ageMs };
  const moved = previous !== undefined && (previous.revision !== doc.revision || previous.updated !== doc.updated);
  if (moved || (ageMs !== undefined && ageMs <= 2 * heartbeatMs)) return { running: true, reason: 'dualrun-running', ageMs };
  return { running: false, reason: 'dualrun-stopped', ageMs };
}
