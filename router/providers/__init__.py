"""Sources of apps besides the configuration file and the admin API: ``docker`` (containers and
Swarm services with ``aliyun.routing.*`` labels). See docs/docker.md."""
