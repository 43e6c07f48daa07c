# The Node GraphQL servers of tests/fixtures (GraphQL Yoga and Apollo Server, both with
# graphql-ws), as docker/compose.yaml runs them in front of subplex. Build from the
# repository root:  docker build -f docker/fixtures.Dockerfile .
FROM node:22-bookworm-slim
WORKDIR /app
COPY tests/fixtures/package.json tests/fixtures/package-lock.json ./
# playwright-core is a dependency but downloads no browser on install.
RUN npm ci --no-audit --no-fund
COPY tests/fixtures/*.mjs ./
# The image's unprivileged `node` user.
USER 1000:1000
