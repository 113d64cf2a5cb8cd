-- depends: 0007_sessions
-- User names are compared by their confusable skeleton (Unicode TS #39): a look-alike
-- of a taken name (`pаypal` with a Cyrillic `а`) is the taken name.
--
-- The skeleton needs Unicode's confusables table, which Postgres does not have, so the
-- gateway computes it (`shared.user_names.skeleton`) and writes it with each new user.
-- Users who signed up before this column existed get theirs from `shared.migrate`
-- right after the migrations are applied (`make migrate`, and every test run); until
-- then theirs is NULL, and NULLs never collide in a unique index.
ALTER TABLE users ADD COLUMN username_skeleton text;
CREATE UNIQUE INDEX users_username_skeleton_key ON users (username_skeleton);
