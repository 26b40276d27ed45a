from ado_ray.cli import main

main()
