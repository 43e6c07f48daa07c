DROP TABLE public.messages;
