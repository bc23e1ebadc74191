-- odmr store, SQLite schema version 4: one spelling per domain.
-- A recipient's domain is kept as odmr_proto::domain::Domain spells it: ASCII lower case, one
-- trailing (root) dot removed. Versions before 4 kept the root dot of an address such as
-- `bob@example.org.`, so that mail was held under `example.org.`, where ATRN for `example.org`
-- never found it and it waited until it expired. SQLite's lower() folds ASCII only, as the type
-- does. Domains of accounts never had a root dot (they were refused with one).
UPDATE recipient
SET domain = lower(CASE WHEN domain LIKE '%.' THEN substr(domain, 1, length(domain) - 1) ELSE domain END)
WHERE domain LIKE '%.' OR domain <> lower(domain);
