import { isMap, isScalar, isSeq, type Document, type LineCounter, type Node } from 'yaml';
import { UsageError } from '../errors.js';

/**
 * A small declarative schema for `migration.yaml`, walked over the `yaml`
 * package's node tree so that every error names the file, line and column,
 * what is wrong and what is allowed. Unknown fields are errors.
 */
export type Spec =
  | { kind: 'object'; fields: Record<string, Spec>; required?: readonly string[]; hint?: Record<string, string> }
  /** `secret`: a value that may hold a secret by mistake, never repeated in the error. */
  | { kind: 'string'; enum?: readonly string[]; pattern?: RegExp; patternText?: string; nonEmpty?: boolean; secret?: boolean }
  | { kind: 'integer'; min?: number; max?: number }
  | { kind: 'boolean' }
  | { kind: 'array'; items: Spec; nonEmpty?: boolean }
  /** A string or a list of strings (e.g. endpoints). */
  | { kind: 'strings' };

/** Where a value sits in the file, for messages about it. */
export interface Position {
  line: number;
  col: number;
}

/** A configuration file that does not validate (exit 2). */
export class ConfigError extends UsageError {
  constructor(file: string, position: Position | undefined, path: string, message: string, hint?: string) {
    const where = position ? `${file}:${position.line}:${position.col}` : file;
    super('config_invalid', `${where}: ${path ? `${path}: ` : ''}${message}`, {
      hint: hint ?? 'Fix the file and run the command again; the README has the migration.yaml reference.',
      details: { file, line: position?.line, column: position?.col, path },
    });
  }
}

export interface ValidationContext {
  file: string;
  lineCounter: LineCounter;
}

export function positionOf(node: Node | null | undefined, ctx: ValidationContext): Position | undefined {
  const offset = node?.range?.[0];
  if (offset === undefined) return undefined;
  const { line, col } = ctx.lineCounter.linePos(offset);
  return { line, col };
}

function describe(spec: Spec): string {
  switch (spec.kind) {
    case 'object':
      return 'a mapping';
    case 'string':
      return spec.enum ? `one of ${spec.enum.join(', ')}` : 'a string';
    case 'integer':
      if (spec.min !== undefined && spec.min === spec.max) return `${spec.min}`;
      return `an integer${spec.min !== undefined ? ` ≥ ${spec.min}` : ''}${spec.min !== undefined && spec.max !== undefined ? ' and' : ''}${spec.max !== undefined ? ` ≤ ${spec.max}` : ''}`;
    case 'boolean':
      return 'true or false';
    case 'array':
      return `a list of ${describe(spec.items)}`;
    case 'strings':
      return 'a string or a list of strings';
  }
}

/**
 * What a node is, for "expected …, got …". A string is quoted inside the file's
 * mapping; at its top, where a file that is not a migration.yaml at all (a
 * token file, a key given to --config by mistake) shows its content, only its
 * length is given.
 */
function typeName(node: Node | null | undefined, path: string): string {
  if (!node) return 'nothing';
  if (isMap(node)) return 'a mapping';
  if (isSeq(node)) return 'a list';
  if (isScalar(node)) {
    const v = node.value;
    if (typeof v === 'string') return path ? `the string ${JSON.stringify(v)}` : `text of ${v.length} characters (not shown: is this a migration.yaml?)`;
    return v === null ? 'null' : `${typeof v} ${String(v)}`;
  }
  return 'an unsupported value';
}

/** A field name as it could be in a migration.yaml; any other is not shown (it may be a line of a file given by mistake). */
const FIELD_LIKE = /^[A-Za-z0-9_.-]{1,64}$/;

/**
 * Validates a node against a spec and returns the plain value.
 * Throws {@link ConfigError} at the first problem.
 */
export function validateNode(node: Node | null | undefined, spec: Spec, path: string, ctx: ValidationContext): unknown {
  const fail = (message: string, at: Node | null | undefined = node, hint?: string): never => {
    throw new ConfigError(ctx.file, positionOf(at, ctx), path, message, hint);
  };
  switch (spec.kind) {
    case 'object': {
      if (!isMap(node)) return fail(`expected ${describe(spec)}, got ${typeName(node, path)}`);
      const out: Record<string, unknown> = {};
      for (const pair of node.items) {
        const keyNode = pair.key as Node;
        const name = isScalar(keyNode) ? String(keyNode.value) : '';
        const fieldSpec = spec.fields[name];
        const fieldPath = path ? `${path}.${name}` : name;
        if (!fieldSpec) {
          const allowed = Object.keys(spec.fields).join(', ');
          if (!FIELD_LIKE.test(name)) {
            throw new ConfigError(ctx.file, positionOf(keyNode, ctx), path, `unknown field of ${name.length} characters, not a field name (not shown: is this a migration.yaml?); allowed fields here: ${allowed}`);
          }
          throw new ConfigError(ctx.file, positionOf(keyNode, ctx), fieldPath, `unknown field "${name}"; allowed fields here: ${allowed}`, spec.hint?.[name]);
        }
        out[name] = validateNode(pair.value as Node, fieldSpec, fieldPath, ctx);
      }
      for (const name of spec.required ?? []) {
        if (out[name] === undefined) fail(`missing required field "${name}" (${describe(spec.fields[name]!)})`);
      }
      return out;
    }
    case 'string': {
      if (!isScalar(node) || typeof node.value !== 'string') return fail(`expected ${describe(spec)}, got ${typeName(node, path)}`);
      const value = node.value;
      if (spec.enum && !spec.enum.includes(value)) fail(`"${value}" is not allowed; allowed values: ${spec.enum.join(', ')}`);
      if (spec.nonEmpty && value === '') fail('must not be empty');
      if (spec.pattern && !spec.pattern.test(value)) fail(`${spec.secret ? 'the value' : `"${value}"`} is not ${spec.patternText ?? `of the form ${spec.pattern}`}`);
      return value;
    }
    case 'integer': {
      if (!isScalar(node) || typeof node.value !== 'number' || !Number.isInteger(node.value)) return fail(`expected ${describe(spec)}, got ${typeName(node, path)}`);
      const value = node.value;
      if ((spec.min !== undefined && value < spec.min) || (spec.max !== undefined && value > spec.max)) fail(`${value} is out of range; expected ${describe(spec)}`);
      return value;
    }
    case 'boolean': {
      if (!isScalar(node) || typeof node.value !== 'boolean') return fail(`expected ${describe(spec)}, got ${typeName(node, path)}`);
      return node.value;
    }
    case 'array': {
      if (!isSeq(node)) return fail(`expected ${describe(spec)}, got ${typeName(node, path)}`);
      if (spec.nonEmpty && node.items.length === 0) fail('must not be empty');
      return node.items.map((item, i) => validateNode(item as Node, spec.items, `${path}[${i}]`, ctx));
    }
    case 'strings': {
      if (isScalar(node) && typeof node.value === 'string') return node.value.split(',').map((s) => s.trim()).filter(Boolean);
      if (isSeq(node)) return node.items.map((item, i) => validateNode(item as Node, { kind: 'string', nonEmpty: true }, `${path}[${i}]`, ctx));
      return fail(`expected ${describe(spec)}, got ${typeName(node, path)}`);
    }
  }
}

/** The node at a dotted/indexed path, for positions in cross-field errors. */
export function nodeAt(doc: Document, path: (string | number)[]): Node | undefined {
  return (doc.getIn(path, true) as Node | undefined) ?? undefined;
}
