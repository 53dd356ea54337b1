import type { Command, Option } from 'commander';

/**
 * Shell completion, generated from the program's own commander definition
 * (`migrate completion bash|zsh`), so a new command or flag completes as soon
 * as it is registered and a removed one stops completing.
 */

/** One flag as the completion scripts need it. */
export interface CompletionOption {
  /** `-c`, `--config`: every spelling of the flag. */
  names: string[];
  description: string;
  /** The value's name (`file`, `format`…), or undefined for a switch. */
  value: string | undefined;
  /** Allowed values, when the flag has choices. */
  choices: string[] | undefined;
  /** The value is a path: complete file names. */
  file: boolean;
  /** The flag may be given more than once (`--allow`, `--rule`). */
  repeatable: boolean;
}

/** One positional argument. */
export interface CompletionArgument {
  name: string;
  choices: string[] | undefined;
}

export interface CompletionCommand {
  name: string;
  /** A one-line description (the first clause of the command's description). */
  summary: string;
  options: CompletionOption[];
  arguments: CompletionArgument[];
}

/** The program as the completion scripts see it. */
export interface CompletionSpec {
  /** Names the program is installed under (`migrate`, `etcd-consul-migrate`). */
  binaries: string[];
  /** The program's own flags (`--version`, `--help`). */
  options: CompletionOption[];
  commands: CompletionCommand[];
}

const FILE_VALUE = /^(file|path|dir)$/;

function summarize(text: string): string {
  // The first clause is enough for a completion menu; commander descriptions run long.
  const first = text.split(/; | \(|: /)[0]!.trim();
  return first.length <= 80 ? first : `${first.slice(0, first.lastIndexOf(' ', 77))}…`;
}

function describeOption(option: Option): CompletionOption {
  const value = /[<[]([^>\]]+)[>\]]/.exec(option.flags)?.[1];
  return {
    names: [option.short, option.long].filter((n): n is string => Boolean(n)),
    description: summarize(option.description),
    value,
    choices: option.argChoices ? [...option.argChoices] : undefined,
    file: value !== undefined && FILE_VALUE.test(value),
    repeatable: Boolean(option.variadic) || Array.isArray(option.defaultValue),
  };
}

/**
 * Reads the program's definition through commander's public `Help` (the same
 * view `--help` renders): visible commands, their visible options (with
 * `--help`) and arguments.
 */
export function describeProgram(program: Command, binaries: string[] = ['migrate', 'etcd-consul-migrate']): CompletionSpec {
  const help = program.createHelp();
  return {
    binaries,
    options: help.visibleOptions(program).map(describeOption),
    commands: help.visibleCommands(program).map((command) => ({
      name: command.name(),
      summary: summarize(command.summary() || command.description()),
      options: command.createHelp().visibleOptions(command).map(describeOption),
      arguments: command.registeredArguments.map((argument) => ({
        name: argument.name(),
        choices: argument.argChoices ? [...argument.argChoices] : undefined,
      })),
    })),
  };
}

/** A word safe inside a bash `case` pattern or `compgen -W` list (flags and choices are plain words). */
function assertWord(word: string): string {
  if (!/^[A-Za-z0-9_.:+=@%/-]+$/.test(word)) throw new Error(`completion: ${JSON.stringify(word)} is not a plain word`);
  return word;
}

function bashFunctionName(binary: string): string {
  return `_${binary.replace(/[^A-Za-z0-9_]/g, '_')}`;
}

/** The bash script: `complete -F` over the binaries; flags per command, choices and file names for values. */
export function renderBashCompletion(spec: CompletionSpec, version: string): string {
  const fn = bashFunctionName(spec.binaries[0]!);
  const words = (list: string[]) => list.map(assertWord).join(' ');
  const commandNames = spec.commands.map((c) => c.name);
  const lines: string[] = [
    `# bash completion for ${spec.binaries.join(' and ')} ${version}, generated from its command definitions.`,
    `# Install: ${spec.binaries[0]} completion bash > ~/.local/share/bash-completion/completions/${spec.binaries[0]}`,
    `#     or:  source <(${spec.binaries[0]} completion bash)`,
    '# The positional words between the command and the cursor; $1: the command\'s flags that take a value.',
    `${fn}_positionals() {`,
    '  local valued=" $1 " n=0 i skip=0',
    '  for ((i = command_index + 1; i < COMP_CWORD; i++)); do',
    '    if ((skip)); then skip=0; continue; fi',
    '    case "${COMP_WORDS[i]}" in',
    '      -*) [[ "$valued" == *" ${COMP_WORDS[i]} "* ]] && skip=1 ;;',
    '      *) n=$((n + 1)) ;;',
    '    esac',
    '  done',
    '  echo "$n"',
    '}',
    `${fn}() {`,
    '  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" command="" command_index=0 i',
    // The program itself has no flag that takes a value, so the first word without a dash is the command.
    '  for ((i = 1; i < COMP_CWORD; i++)); do',
    '    case "${COMP_WORDS[i]}" in',
    '      -*) ;;',
    '      *) command="${COMP_WORDS[i]}"; command_index=$i; break ;;',
    '    esac',
    '  done',
    '  case "$command" in',
    '    "")',
    `      COMPREPLY=($(compgen -W "${words([...commandNames, ...spec.options.flatMap((o) => o.names)])}" -- "$cur"))`,
    '      return ;;',
  ];
  for (const command of spec.commands) {
    lines.push(`    ${assertWord(command.name)})`);
    const valued = command.options.filter((o) => o.value !== undefined);
    if (valued.length > 0) {
      lines.push('      case "$prev" in');
      for (const option of valued) {
        const pattern = option.names.map(assertWord).join('|');
        if (option.choices) lines.push(`        ${pattern}) COMPREPLY=($(compgen -W "${words(option.choices)}" -- "$cur")); return ;;`);
        else if (option.file) lines.push(`        ${pattern}) compopt -o filenames 2>/dev/null; local IFS=$'\\n'; COMPREPLY=($(compgen -f -- "$cur")); return ;;`);
        else lines.push(`        ${pattern}) return ;;`);
      }
      lines.push('      esac');
    }
    const positional = command.name === 'help' ? commandNames : command.arguments[0]?.choices;
    if (positional) {
      const count = `$(${fn}_positionals "${words(valued.flatMap((o) => o.names))}")`;
      lines.push(`      if [[ "$cur" != -* && ${count} -eq 0 ]]; then COMPREPLY=($(compgen -W "${words(positional)}" -- "$cur")); return; fi`);
    }
    lines.push(`      COMPREPLY=($(compgen -W "${words(command.options.flatMap((o) => o.names))}" -- "$cur"))`);
    lines.push('      ;;');
  }
  lines.push('  esac', '}', `complete -F ${fn} ${spec.binaries.map(assertWord).join(' ')}`, '');
  return lines.join('\n');
}

/** Single-quotes text for zsh. */
function zq(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

/** Text inside an `_arguments` `[description]`. */
function zdesc(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/([[\]])/g, '\\$1');
}

function zshOptionSpecs(option: CompletionOption): string[] {
  const exclusive = option.repeatable ? '*' : option.names.length > 1 ? `(${option.names.join(' ')})` : '';
  const action = option.choices ? `(${option.choices.join(' ')})` : option.file ? '_files' : ' ';
  const value = option.value === undefined ? '' : `:${option.value.replace(/:/g, '\\:')}:${action}`;
  const isHelpOrVersion = option.names.includes('--help') || option.names.includes('--version');
  return option.names.map((name) => zq(`${isHelpOrVersion ? '(- *)' : exclusive}${name}[${zdesc(option.description)}]${value}`));
}

/** The zsh script: `#compdef` for `fpath`, or `compdef` when sourced; descriptions from `--help`. */
export function renderZshCompletion(spec: CompletionSpec, version: string): string {
  const fn = bashFunctionName(spec.binaries[0]!);
  const commandNames = spec.commands.map((c) => c.name);
  const lines: string[] = [
    `#compdef ${spec.binaries.join(' ')}`,
    `# zsh completion for ${spec.binaries.join(' and ')} ${version}, generated from its command definitions.`,
    `# Install: ${spec.binaries[0]} completion zsh > "\${fpath[1]}/${fn}"   (then start a new shell)`,
    `#     or:  source <(${spec.binaries[0]} completion zsh)   (after compinit)`,
    '',
    `${fn}() {`,
    '  local curcontext="$curcontext" state line ret=1',
    '  typeset -A opt_args',
    '  _arguments -C \\',
    ...spec.options.flatMap(zshOptionSpecs).map((s) => `    ${s} \\`),
    "    '1: :->command' \\",
    "    '*:: :->args' && ret=0",
    '  case $state in',
    '    command)',
    '      local -a commands',
    '      commands=(',
    ...spec.commands.map((c) => `        ${zq(`${c.name}:${c.summary.replace(/:/g, '\\:')}`)}`),
    '      )',
    `      _describe -t commands ${zq(`${spec.binaries[0]} command`)} commands && ret=0`,
    '      ;;',
    '    args)',
    '      curcontext="${curcontext%:*:*}:' + spec.binaries[0] + '-$line[1]:"',
    '      case $line[1] in',
  ];
  for (const command of spec.commands) {
    const specs = command.options.flatMap(zshOptionSpecs);
    const positional = command.name === 'help' ? [{ name: 'command', choices: commandNames }] : command.arguments;
    positional.forEach((argument, i) => specs.push(zq(`${i + 1}:${argument.name}:${argument.choices ? `(${argument.choices.join(' ')})` : ' '}`)));
    lines.push(`        ${command.name})`);
    lines.push('          _arguments \\');
    for (const s of specs) lines.push(`            ${s} \\`);
    lines.push('            && ret=0', '          ;;');
  }
  lines.push(
    '      esac',
    '      ;;',
    '  esac',
    '  return ret',
    '}',
    '',
    // Autoloaded from fpath the file is the function's body; sourced, it registers itself.
    `if [[ "\${funcstack[1]}" == ${fn} ]]; then`,
    `  ${fn} "$@"`,
    'else',
    `  compdef ${fn} ${spec.binaries.join(' ')}`,
    'fi',
    '',
  );
  return lines.join('\n');
}
