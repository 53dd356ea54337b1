import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Keys written by one etcd transaction share a `mod_revision`. Counting keys
 * per revision over a pass in key order needs one counter per distinct
 * revision, which on a real cluster is about one per key. To keep memory
 * bounded, the counters live in a fixed table of at most `memoryEntries`
 * revisions; when it fills, it is written to a temporary file as a run sorted by
 * revision and cleared, and the runs are merged at the end (an external
 * sort). Exact, in bounded memory; the disk use is about 24 bytes per
 * distinct revision, removed by {@link RevisionGroupCounter.close}.
 */

/** One revision's keys that the copy would write, with the txn they would need. */
export interface RevisionGroup {
  revision: number;
  /** Ops (keys) in the group. */
  ops: number;
  /** Estimated `/v1/txn` body bytes of those ops (values base64-encoded). */
  bytes: number;
  /** Whether a value of the group is too large for any txn (it goes by single PUT). */
  singlePut: boolean;
  /** One key of the group (at most {@link KEY_SAMPLE_BYTES} bytes), when one was kept. */
  key: Buffer | undefined;
}

/** Keys kept with a group are cut to this length (they are examples, not identities). */
export const KEY_SAMPLE_BYTES = 96;
const HEADER_BYTES = 8 + 4 + 8 + 1 + 1;

export interface RevisionGroupOptions {
  /** Distinct revisions kept in memory before a run is spilled; default 131,072. */
  memoryEntries?: number;
  /** Where runs go; default a fresh directory under the OS temp directory. */
  spillDir?: string;
}

export class RevisionGroupCounter {
  // An open-addressing hash table in typed arrays: no object per revision, so
  // the common case (one key per revision) creates no garbage at all.
  private readonly slots: number;
  private readonly revisions: Float64Array;
  private readonly ops: Uint32Array;
  private readonly bytes: Float64Array;
  private readonly singlePut: Uint8Array;
  /** One key per slot, kept only for groups of two or more keys. */
  private keys: (Buffer | undefined)[];
  private size = 0;
  private readonly memoryEntries: number;
  private dir: string | undefined;
  private readonly runs: string[] = [];
  spilledRuns = 0;

  constructor(private readonly options: RevisionGroupOptions = {}) {
    this.memoryEntries = Math.max(2, options.memoryEntries ?? 131_072);
    let slots = 4;
    while (slots < this.memoryEntries * 2) slots *= 2;
    this.slots = slots;
    this.revisions = new Float64Array(slots).fill(-1);
    this.ops = new Uint32Array(slots);
    this.bytes = new Float64Array(slots);
    this.singlePut = new Uint8Array(slots);
    this.keys = new Array<Buffer | undefined>(slots);
  }

  add(revision: number, opBytes: number, singlePut: boolean, key: Buffer): void {
    const mask = this.slots - 1;
    // Revisions are dense integers: a multiplicative hash spreads them well enough.
    let slot = Math.imul(revision | 0, 0x9e3779b1) & mask;
    for (;;) {
      const found = this.revisions[slot]!;
      if (found === revision) {
        this.ops[slot]!++;
        this.bytes[slot]! += opBytes;
        if (singlePut) this.singlePut[slot] = 1;
        // Only groups of two or more keep a key: singletons are the common case and need none.
        if (this.keys[slot] === undefined) this.keys[slot] = Buffer.from(key.subarray(0, KEY_SAMPLE_BYTES));
        return;
      }
      if (found === -1) break;
      slot = (slot + 1) & mask;
    }
    if (this.size >= this.memoryEntries) {
      this.spill();
      this.add(revision, opBytes, singlePut, key);
      return;
    }
    this.revisions[slot] = revision;
    this.ops[slot] = 1;
    this.bytes[slot] = opBytes;
    this.singlePut[slot] = singlePut ? 1 : 0;
    this.size++;
  }

  /** Every revision group, in revision order. Call once, after the last `add`. */
  *groups(): Generator<RevisionGroup> {
    const memory = this.drain();
    const sources: GroupSource[] = this.runs.map((file) => new RunReader(file));
    sources.push(new ArraySource(memory));
    try {
      const heads = sources.map((s) => s.next());
      for (;;) {
        let min = -1;
        for (let i = 0; i < heads.length; i++) {
          const h = heads[i];
          if (h && (min === -1 || h.revision < heads[min]!.revision)) min = i;
        }
        if (min === -1) return;
        const group = heads[min]!;
        heads[min] = sources[min]!.next();
        for (let i = 0; i < heads.length; i++) {
          while (heads[i] && heads[i]!.revision === group.revision) {
            const other = heads[i]!;
            group.ops += other.ops;
            group.bytes += other.bytes;
            group.singlePut ||= other.singlePut;
            group.key ??= other.key;
            heads[i] = sources[i]!.next();
          }
        }
        yield group;
      }
    } finally {
      for (const source of sources) source.close();
    }
  }

  /** Removes the spilled runs. */
  close(): void {
    if (this.dir && !this.options.spillDir) rmSync(this.dir, { recursive: true, force: true });
    else for (const file of this.runs) rmSync(file, { force: true });
    this.runs.length = 0;
    this.dir = undefined;
  }

  /** The table's groups sorted by revision; empties the table. */
  private drain(): RevisionGroup[] {
    const out: RevisionGroup[] = [];
    for (let slot = 0; slot < this.slots; slot++) {
      const revision = this.revisions[slot]!;
      if (revision === -1) continue;
      out.push({ revision, ops: this.ops[slot]!, bytes: this.bytes[slot]!, singlePut: this.singlePut[slot] === 1, key: this.keys[slot] });
    }
    this.revisions.fill(-1);
    this.keys = new Array<Buffer | undefined>(this.slots);
    this.size = 0;
    return out.sort((a, b) => a.revision - b.revision);
  }

  private spill(): void {
    this.dir ??= this.options.spillDir ?? mkdtempSync(join(tmpdir(), 'migrate-audit-'));
    const file = join(this.dir, `run-${this.runs.length}.bin`);
    const groups = this.drain();
    const fd = openSync(file, 'w');
    try {
      const chunk = Buffer.alloc(1 << 20);
      let at = 0;
      for (const group of groups) {
        const keyLen = group.key?.length ?? 0;
        if (at + HEADER_BYTES + keyLen > chunk.length) {
          writeSync(fd, chunk, 0, at);
          at = 0;
        }
        at = chunk.writeDoubleLE(group.revision, at);
        at = chunk.writeUInt32LE(group.ops, at);
        at = chunk.writeDoubleLE(group.bytes, at);
        at = chunk.writeUInt8((group.singlePut ? 1 : 0) | (group.key ? 2 : 0), at);
        at = chunk.writeUInt8(keyLen, at);
        if (group.key) at += group.key.copy(chunk, at);
      }
      if (at > 0) writeSync(fd, chunk, 0, at);
    } finally {
      closeSync(fd);
    }
    this.runs.push(file);
    this.spilledRuns++;
  }
}

interface GroupSource {
  next(): RevisionGroup | undefined;
  close(): void;
}

class ArraySource implements GroupSource {
  private i = 0;
  constructor(private readonly groups: RevisionGroup[]) {}
  next(): RevisionGroup | undefined {
    return this.groups[this.i++];
  }
  close(): void {}
}

/** Reads one spilled run sequentially through a fixed buffer. */
class RunReader implements GroupSource {
  private readonly fd: number;
  private buffer = Buffer.alloc(256 * 1024);
  private start = 0;
  private end = 0;
  private eof = false;

  constructor(file: string) {
    this.fd = openSync(file, 'r');
  }

  next(): RevisionGroup | undefined {
    if (!this.ensure(HEADER_BYTES)) return undefined;
    const keyLen = this.buffer.readUInt8(this.start + HEADER_BYTES - 1);
    if (!this.ensure(HEADER_BYTES + keyLen)) return undefined;
    const b = this.buffer;
    const at = this.start;
    const flags = b.readUInt8(at + 20);
    const group: RevisionGroup = {
      revision: b.readDoubleLE(at),
      ops: b.readUInt32LE(at + 8),
      bytes: b.readDoubleLE(at + 12),
      singlePut: (flags & 1) !== 0,
      key: flags & 2 ? Buffer.from(b.subarray(at + HEADER_BYTES, at + HEADER_BYTES + keyLen)) : undefined,
    };
    this.start += HEADER_BYTES + keyLen;
    return group;
  }

  /** Makes at least `n` unread bytes available; false at the end of the file. */
  private ensure(n: number): boolean {
    if (this.end - this.start >= n) return true;
    if (this.eof) return false;
    this.buffer.copy(this.buffer, 0, this.start, this.end);
    this.end -= this.start;
    this.start = 0;
    while (this.end < n && !this.eof) {
      const read = readSync(this.fd, this.buffer, this.end, this.buffer.length - this.end, null);
      if (read === 0) this.eof = true;
      this.end += read;
    }
    return this.end - this.start >= n;
  }

  close(): void {
    closeSync(this.fd);
  }
}
