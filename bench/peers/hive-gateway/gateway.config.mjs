// Hive Gateway in proxy mode in front of subplex-bench's emitter, started by the harness as
// `hive-gateway proxy -c gateway.config.mjs --host 127.0.0.1 --port N` with
// BENCH_UPSTREAM_HTTP, BENCH_UPSTREAM_WS and BENCH_SCHEMA in the environment.
import { getOperationAST } from 'graphql';

export const gatewayConfig = {
  proxy: { endpoint: process.env.BENCH_UPSTREAM_HTTP },
  // The SDL, so the gateway does not introspect the emitter (which serves no queries).
  schema: process.env.BENCH_SCHEMA,
  transportEntries: {
    '*.http': {
      options: {
        subscriptions: {
          kind: 'ws',
          location: process.env.BENCH_UPSTREAM_WS,
        },
      },
    },
  },
  logging: 'error',
  plugins: (configContext) => [
    // In proxy mode the GraphQL context of downstream WebSocket operations lacks the
    // config context (log), and every WebSocket operation failed without it.
    {
      onContextBuilding({ context, extendContext }) {
        if (!context.log) {
          extendContext({ log: configContext.log });
        }
      },
    },
    // Execution requests reach the HTTP transport without `operationType`, so
    // subscriptions silently went upstream over SSE instead of the WebSocket transport.
    {
      onSubgraphExecute({ executionRequest, setExecutionRequest }) {
        if (!executionRequest.operationType) {
          const operation = getOperationAST(
            executionRequest.document,
            executionRequest.operationName,
          );
          if (operation) {
            setExecutionRequest({ ...executionRequest, operationType: operation.operation });
          }
        }
      },
    },
  ],
};
