-- A synthetic chat-api database for the migration's benchmark: :users users,
-- :conversations conversations spread over them, :per messages each (user and
-- assistant turns, contents of a few hundred to a few thousand characters,
-- a second apart), as the chat-api would have stored them.
-- psql -v users=1000 -v conversations=10000 -v per=10 -f synthetic.sql
INSERT INTO users (id, email, name, provider, provider_id)
SELECT md5('user' || u)::uuid, 'user' || u || '@example.com', 'User ' || u, 'google', 'g' || u
FROM generate_series(1, :users) AS u;

INSERT INTO conversations (id, user_id, title, model_tag, created_at, updated_at, is_favorited)
SELECT md5('conversation' || c)::uuid,
       md5('user' || (1 + c % :users))::uuid,
       'Conversation ' || c,
       'default',
       timestamptz '2026-01-01' + c * interval '1 minute',
       timestamptz '2026-01-01' + c * interval '1 minute' + interval '1 second',
       c % 17 = 0
FROM generate_series(1, :conversations) AS c;

INSERT INTO messages (id, conversation_id, role, content, token_count, model_tag, inference_time_ms, created_at)
SELECT md5('message' || c || '-' || m)::uuid,
       md5('conversation' || c)::uuid,
       CASE WHEN m % 2 = 1 THEN 'user' ELSE 'assistant' END,
       repeat('Namaste, this is message ' || m || ' of conversation ' || c || '. ', 4 + (c * 7 + m * 13) % 60),
       CASE WHEN m % 2 = 0 THEN 50 + m END,
       CASE WHEN m % 2 = 0 THEN 'default' END,
       CASE WHEN m % 2 = 0 THEN 900 + m END,
       timestamptz '2026-01-01' + c * interval '1 minute' + m * interval '1 second'
FROM generate_series(1, :conversations) AS c, generate_series(1, :per) AS m;
ANALYZE;
