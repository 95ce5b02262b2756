// ESLint flat config: the recommended rules of ESLint and typescript-eslint, without type-aware
// linting (tsc already type-checks, see `npm run typecheck`) so that `npm run lint` stays fast.
import js from '@eslint/js'
import { defineConfig } from 'eslint/config'
import tseslint from 'typescript-eslint'

// The globals our plain .js files use (TypeScript files get theirs from @types/node, and
// typescript-eslint turns no-undef off for them). Kept here to avoid a dependency on `globals`.
const nodeGlobals = Object.fromEntries([
  'AbortController', 'AbortSignal', 'Buffer', 'URL', 'URLSearchParams', 'TextDecoder', 'TextEncoder',
  'clearImmediate', 'clearInterval', 'clearTimeout', 'console', 'fetch', 'globalThis', 'process',
  'queueMicrotask', 'setImmediate', 'setInterval', 'setTimeout', 'structuredClone'
].map(name => [name, 'readonly']))

const unusedVars = ['error', {
  args: 'after-used',
  argsIgnorePattern: '^_',
  varsIgnorePattern: '^_',
  caughtErrors: 'none',
  destructuredArrayIgnorePattern: '^_',
  ignoreRestSiblings: true
}]

export default defineConfig(
  { ignores: ['**/node_modules/', '.tap/', 'coverage/', 'data/', 'tmp/', 'dist/'] },
  {
    files: ['**/*.ts', '**/*.js'],
    extends: [js.configs.recommended, tseslint.configs.recommended],
    languageOptions: {
      ecmaVersion: 'latest',
      sourceType: 'module',
      globals: nodeGlobals
    },
    linterOptions: {
      reportUnusedDisableDirectives: 'error'
    },
    rules: {
      'no-unused-vars': 'off',
      '@typescript-eslint/no-unused-vars': unusedVars,
      // `catch {}` and `() => {}` are deliberate in best-effort cleanup code.
      'no-empty': ['error', { allowEmptyCatch: true }],
      '@typescript-eslint/no-empty-function': 'off'
    }
  }
)
