-- The table the compose set-up subscribes to: `subscription { messages { id text } }`.
CREATE TABLE public.messages (
    id serial PRIMARY KEY,
    text text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO public.messages (text) VALUES ('hello from Hasura');
