import { createHash } from 'node:crypto';
import type { SourceWriteOp } from '../stores/etcd-writer.js';
import type { SourceEvent, TargetStore, TxnOp } from '../stores/types.js';

/**
 * What a write does to one etcd key, as a short hash: the verb, the key and,
 * for a put, the value. The same for the op the dual-run sends and the event
 * etcd's watch delivers for it.
 */
export function writePrint(verb: 'put' | 'delete', key: Buffer, value?: Buffer): string {
  const hash = createHash('sha256').update(verb).update('\0').update(key);
  if (verb === 'put') hash.update('\0').update(value ?? Buffer.alloc(0));
  return hash.digest('base64url').slice(0, 22);
}

function opPrint(op: SourceWriteOp): string {
  return op.verb === 'put' ? writePrint('put', op.key, op.value) : writePrint('delete', op.key);
}

/** Where the dual-run's writes to etcd are announced before they are made, and who may write there. */
export interface OwnWritesJournal {
  target: Pick<TargetStore, 'applyTxn' | 'listKeys' | 'readEntries'>;
  /** The folder of the announcements (`_migrate/<id>/own-writes/`), one document per scope (a rule's reverse mirror). */
  folder: string;
  /** The leader lock's key and session: an announcement is written only while this dual-run leads. */
  fence: () => TxnOp;
  /** The revision up to which the checkpoint has passed every event: writes at or below it are announced no longer. */
  checkpoint: () => number;
}

/** The most one scope's document holds, about: far below Consul's 512 KiB value limit. */
const JOURNAL_MAX_BYTES = 128 * 1024;

/** An announcement's share of its document: each print is 22 characters, quoted, with a comma. */
function announcedBytes(w: Announced): number {
  return 32 + w.prints.length * 25;
}

interface Announced {
  /** etcd's revision of the write, once it answered. */
  revision?: number;
  prints: string[];
}

/** The document of one scope: the writes announced and not yet passed by the checkpoint. */
interface JournalDoc {
  schemaVersion: 1;
  writes: { revision: number | null; prints: string[] }[];
}

/**
 * The etcd revisions the dual-run wrote itself (the reverse mirrors, keys
 * written back). The forward watch sees them as ordinary events; anything else
 * under a rule owned by Consul is a late writer. A write still in flight is
 * awaited before the question is answered, since etcd may deliver the watch
 * event before the txn's own answer.
 *
 * A dual-run killed (SIGKILL, a lost host) records none of the writes it made
 * past its last checkpoint, and the next leader took them for late writes
 * (verify failed, rollback and finalize were refused until acknowledged). So
 * each write is announced in Consul first, by what it does (the hash of each
 * op), under the leader lock; the next leader takes the announcements over and
 * knows those writes when the watch replays them.
 */
export class OwnWrites {
  private readonly revisions = new Set<number>();
  private readonly inflight = new Set<Promise<unknown>>();
  /** Announced writes per scope, not yet passed by the checkpoint. */
  private readonly announced = new Map<string, Announced[]>();
  /** Writes an earlier leader announced: known by what they do, not their revision; all at or below {@link adoptedUntil}. */
  private readonly adopted = new Set<string>();
  private adoptedUntil = Infinity;

  constructor(private readonly journal?: OwnWritesJournal) {}

  /** Reads what earlier leaders announced, before this one writes anything. */
  async adoptJournal(): Promise<void> {
    if (!this.journal) return;
    const { target, folder } = this.journal;
    for (const entry of await target.readEntries(await target.listKeys(folder))) {
      let doc: JournalDoc;
      try {
        doc = JSON.parse(entry.value.toString('utf8')) as JournalDoc;
      } catch {
        continue;
      }
      const scope = entry.key.slice(folder.length);
      const kept: Announced[] = [];
      for (const w of doc.writes ?? []) {
        for (const print of w.prints) this.adopted.add(print);
        // Unknown revision (killed before etcd answered): kept until this leader's checkpoint passes its own first write.
        kept.push({ ...(w.revision !== null ? { revision: w.revision } : {}), prints: w.prints });
      }
      this.announced.set(scope, kept);
    }
  }

  /**
   * Makes `write` (the txn of `ops`), announced first under `scope` when a
   * journal is kept; its revision is remembered as this dual-run's own.
   */
  async track(scope: string, ops: readonly SourceWriteOp[], write: () => Promise<number>): Promise<number> {
    const entry: Announced = { prints: ops.map(opPrint) };
    if (this.journal) await this.announce(scope, entry);
    const pending = write();
    this.inflight.add(pending);
    try {
      const revision = await pending;
      entry.revision = revision;
      this.revisions.add(revision);
      return revision;
    } finally {
      this.inflight.delete(pending);
    }
  }

  private async announce(scope: string, entry: Announced): Promise<void> {
    const journal = this.journal!;
    const passed = journal.checkpoint();
    // Writes the checkpoint has passed are never replayed to a next leader; one of unknown revision stays until one after it is passed.
    const list = this.announced.get(scope) ?? [];
    const lastPassed = list.findLastIndex((w) => w.revision !== undefined && w.revision <= passed);
    const kept = [...list.slice(lastPassed + 1).filter((w) => w.revision === undefined || w.revision > passed), entry];
    // A checkpoint that stalls (etcd reading a large revision) while applications write on: the oldest go first, so the
    // document stays well within a Consul value (a write then lost to a kill would be taken for a late one, nothing worse).
    let bytes = kept.reduce((n, w) => n + announcedBytes(w), 0);
    while (bytes > JOURNAL_MAX_BYTES && kept.length > 1) bytes -= announcedBytes(kept.shift()!);
    this.announced.set(scope, kept);
    const doc: JournalDoc = { schemaVersion: 1, writes: kept.map((w) => ({ revision: w.revision ?? null, prints: w.prints })) };
    await journal.target.applyTxn([{ verb: 'set', key: `${journal.folder}${scope}`, value: Buffer.from(JSON.stringify(doc)) }, journal.fence()]);
  }

  async isOwn(revision: number): Promise<boolean> {
    if (this.revisions.has(revision)) return true;
    if (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
    return this.revisions.has(revision);
  }

  /**
   * Whether an earlier leader announced this write (it may have made it past its last checkpoint, then died).
   * Only at or below etcd's head when this leader took over: a write of the same value to the same key since is
   * someone else's (a late writer repeating a value the mirror once wrote went unreported).
   */
  announcedEarlier(event: SourceEvent): boolean {
    if (this.adopted.size === 0 || event.entry.modRevision > this.adoptedUntil) return false;
    return this.adopted.has(event.type === 'put' ? writePrint('put', event.entry.key, event.entry.value) : writePrint('delete', event.entry.key));
  }

  /** etcd's head when this leader first watched: every write an earlier leader made is at or below it. */
  headAtTakeover(revision: number): void {
    if (this.adoptedUntil === Infinity) this.adoptedUntil = revision;
  }

  /** Forgets revisions the checkpoint has passed. */
  prune(below: number): void {
    for (const r of this.revisions) if (r < below) this.revisions.delete(r);
    if (below > this.adoptedUntil) this.adopted.clear();
  }

  /** Takes these revisions as own writes (an earlier run's, recorded at its stop). */
  adopt(revisions: readonly number[]): void {
    for (const r of revisions) this.revisions.add(r);
  }

  /** Own writes past `revision`, in order. */
  after(revision: number): number[] {
    return [...this.revisions].filter((r) => r > revision).sort((a, b) => a - b);
  }
}
